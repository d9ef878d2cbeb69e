"""kerasop: the command line of Keras Operator, above the operator, the trainer and the server."""
