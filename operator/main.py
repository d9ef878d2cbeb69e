"""The operator process: `keras-operator` runs kopf with the handlers of every kind."""

from __future__ import annotations

from keras_operator.handlers import serving, setup, training  # noqa: F401  (importing registers the handlers)
from keras_operator.settings import Settings


def main() -> None:
    import kopf

    settings = Settings.from_env()
    kopf.run(
        clusterwide=not settings.namespaces,
        namespaces=settings.namespaces,
        liveness_endpoint=f"http://0.0.0.0:{settings.liveness_port}/healthz",
        standalone=True,  # one replica (Recreate): kopf peering needs no extra RBAC or CRDs
    )


if __name__ == "__main__":
    main()
