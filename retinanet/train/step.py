"""One training step under a distribution strategy: forward, loss, gradients, clipping, update."""

from __future__ import annotations

import keras
import tensorflow as tf

from retinanet.config import Config
from retinanet.detection.losses import image_loss


def build_train_step(config: Config, strategy: tf.distribute.Strategy, model: keras.Model,
                     optimizer: keras.optimizers.Optimizer, loss):
    """A tf.function: one global batch (distributed dataset element) -> dict of scalar metrics."""
    replicas = strategy.num_replicas_in_sync
    global_batch = config.training.batch_size
    image_weight = config.loss.image_weight if config.model.image_head else 0.0
    clip_norm = config.training.gradient_clip_norm
    scaled = isinstance(optimizer, keras.optimizers.LossScaleOptimizer)

    def replica_step(batch):
        context = tf.distribute.get_replica_context()
        with tf.GradientTape() as tape:
            outputs = model(batch["images"], training=True)
            sums = loss.components(batch["targets"], outputs["predictions"])
            # The normaliser is the positive count of the whole global batch, not this replica's.
            num_positive = context.all_reduce("sum", sums["num_positive"])
            terms = loss.normalize(sums, num_positive)
            image_term = 0.0
            if image_weight:
                image_term = tf.reduce_sum(image_loss(batch["image_labels"], outputs["image_logits"])) / global_batch
            total = terms["total"] + image_weight * image_term
            total_for_gradient = optimizer.scale_loss(total) if scaled else total
        gradients = tape.gradient(total_for_gradient, model.trainable_variables)
        gradients = context.all_reduce("sum", gradients)
        if scaled:
            gradients = [g / optimizer.dynamic_scale for g in gradients]
        norm = tf.linalg.global_norm(gradients)
        # The optimizer sums gradients over replicas again: hand each replica its share, and clip
        # as tf.clip_by_global_norm does (NaN for a non-finite norm), in one pass over the gradients.
        factor = (optimizer.dynamic_scale if scaled else 1.0) / replicas
        if clip_norm:
            factor = factor * clip_norm * tf.minimum(1.0 / norm, 1.0 / clip_norm) + (norm - norm)
        if clip_norm or scaled or replicas > 1:
            gradients = [g * tf.cast(factor, g.dtype) for g in gradients]
        optimizer.apply_gradients(zip(gradients, model.trainable_variables))
        return {"loss/total": total, "loss/classification": terms["classification"], "loss/box": terms["box"],
                "loss/image": image_term, "gradient_norm": norm, "positive_anchors": num_positive}

    def step(batch):
        results = strategy.run(replica_step, args=(batch,))
        # Each replica's loss terms are its share of the global loss: sum them. The norm and
        # the positive count are already global, identical on every replica.
        return {key: strategy.reduce("sum", value, axis=None) / (replicas if key in
                ("gradient_norm", "positive_anchors") else 1.0) for key, value in results.items()}

    # No AutoGraph: the step holds no Python control flow on tensors, and converting Keras' layers
    # cost seconds at every start.
    return tf.function(step, jit_compile=config.training.jit_compile or None, reduce_retracing=True, autograph=False)
