"""Names on the wire: the labels, annotations, container names and token audiences the operator's objects
carry and its watches, selectors and readers look for. One place for each: the builders write them, the
status readers and controllers read them, the handlers select by them (and the trainer may read them too).
"""

from __future__ import annotations

from types import MappingProxyType

from keras_operator.api.common import GROUP

# Every object the operator makes.
MANAGED_BY = "keras-operator"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
NAME_LABEL = "app.kubernetes.io/name"
INSTANCE_LABEL = "app.kubernetes.io/instance"
WATCHED_LABELS = MappingProxyType({MANAGED_BY_LABEL: MANAGED_BY})
"""What the operator watches: the objects it made."""
SPEC_HASH_ANNOTATION = f"{GROUP}/spec-hash"
"""A hash of the object as built, so a reconcile patches only what changed."""

# KerasTrainingJob: its Job, pods and worker Service.
TRAINER_CONTAINER = "trainer"
TRAINING_JOB_LABEL = f"{GROUP}/training-job"
"""On the Job and its pods: the KerasTrainingJob's name (the watches map them back to it)."""
TRAINER_CONFIG_ANNOTATION = f"{GROUP}/trainer-config"
"""On the pod template: the trainer's job file (the downward API mounts it)."""
GENERATION_ANNOTATION = f"{GROUP}/generation"
# On a training's Job: the model its spec.model.trainingJobRef resolved to when the Job was made (the
# status reads it back, so a referenced training that changes later never changes what this one says).
STARTED_FROM_ANNOTATION = f"{GROUP}/started-from"
"""On the Job: the KerasTrainingJob's generation it was made for."""
COMPLETION_INDEX_ANNOTATION = "batch.kubernetes.io/job-completion-index"
"""Set by the Job controller on each pod of an Indexed Job: its worker number."""
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
KUEUE_PRIORITY_CLASS_LABEL = "kueue.x-k8s.io/priority-class"
"""Kueue's WorkloadPriorityClass, read from the Job."""
PROGRESS_AUDIENCE = f"{GROUP}/progress"
"""The audience of the trainer's progress tokens: they open nothing on the API server."""
TOKEN_POD_NAME = "authentication.kubernetes.io/pod-name"
TOKEN_POD_UID = "authentication.kubernetes.io/pod-uid"
"""A TokenReview's extra fields naming the pod a bound token was minted for."""

# KerasModelService: its Deployments, Services, HPA and HTTPRoute.
SERVER_CONTAINER = "server"
MODEL_SERVICE_LABEL = f"{GROUP}/model-service"
"""The stable pods' label and the stable Deployment's selector (immutable, so never widened). Every object
the operator makes for a KerasModelService carries it too: its watch maps them back to the resource."""
CANARY_LABEL = f"{GROUP}/canary"
"""The canary pods' label, and their Deployment's selector."""
SERVING_LABEL = f"{GROUP}/serving"
"""On both sides' pods: the Service's selector while traffic is split by pods. The two Deployments' selectors
never overlap (an HPA averaging over the stable Deployment's selector would count canary pods)."""
TRACK_LABEL = f"{GROUP}/track"
"""stable | canary, for people and dashboards."""
MODEL_SOURCE_ANNOTATION = f"{GROUP}/model-source"
"""On the stable Deployment: the spec.model it was made for. A model resolved from a KerasTrainingJob stays
served across edits of anything else (the training may be gone or running again by then)."""
