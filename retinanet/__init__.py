"""RetinaNet for pneumonia detection on the RSNA chest X-ray data (TensorFlow 2, Keras 3)."""

import os

# TensorFlow's C++ start-up chatter (CPU features, CUDA probing) hides the progress bars;
# users who want it set TF_CPP_MIN_LOG_LEVEL themselves.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
