"""distilnas.distill: the training core (floor 1). GLUE data and metrics, teachers, training, measurement.

It knows nothing of searching; every other floor builds on it.
"""
