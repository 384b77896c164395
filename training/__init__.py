"""Model builders, training and evaluation; imports TensorFlow."""
