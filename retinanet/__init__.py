"""RetinaNet for pneumonia detection on the RSNA chest X-ray data (TensorFlow 2, Keras 3)."""

from retinanet.runtime import quiet_start

# Before anything imports TensorFlow: its start-up chatter (and, without a GPU, its CUDA probe
# error) hides the progress bars and reads as a failure. TF_CPP_MIN_LOG_LEVEL set by the user wins.
quiet_start.install()
