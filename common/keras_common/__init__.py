"""What the operator, the trainer and the model server share: the version and the logging set-up."""

__version__ = "0.1.0"
