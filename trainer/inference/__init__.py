"""Using a trained TRACE: the route-then-batch encoding engine and the inputs the public API accepts."""
