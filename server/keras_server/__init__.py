"""The generic Keras model server: TensorFlow Serving REST and Open Inference Protocol (v2)."""
