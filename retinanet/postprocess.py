"""Network outputs -> fixed-size detections, in-graph for whole batches.

Sigmoid scores, top-k per pyramid level, decode with the encoder's variance, class-aware NMS,
clip to the image, then back to original pixels by the letterbox scale.
"""

from __future__ import annotations

import tensorflow as tf

from retinanet import boxes as box_ops


class Postprocessor:
    """Callable: (predictions [B, A, 4 + K], scales [B]) -> dict of

    "boxes" [B, D, 4] (`x1, y1, x2, y2`, original pixels), "scores" [B, D], "classes" [B, D]
    int32 and "num_detections" [B] int32; D = max_detections, padded with zeros.
    """

    def __init__(self, anchors, level_sizes: list[int], image_size: tuple[int, int], *, num_classes: int = 1,
                 score_threshold: float = 0.05, pre_nms_top_k: int = 1000, nms_iou: float = 0.5,
                 max_detections: int = 100, box_shrink: float = 1.0):
        self.anchors = tf.convert_to_tensor(anchors, tf.float32)
        self.level_sizes = list(level_sizes)
        self.image_size = tuple(image_size)
        self.num_classes = num_classes
        self.score_threshold = score_threshold
        self.pre_nms_top_k = pre_nms_top_k
        self.nms_iou = nms_iou
        self.max_detections = max_detections
        self.box_shrink = box_shrink

    def candidates(self, predictions):
        """Top-k (anchor, class) pairs per level -> boxes [B, C, 4] input pixels, scores [B, C], classes [B, C]."""
        deltas = tf.cast(predictions[..., :4], tf.float32)
        scores = tf.sigmoid(tf.cast(predictions[..., 4:], tf.float32))
        batch = tf.shape(predictions)[0]
        boxes_list, scores_list, classes_list = [], [], []
        offset = 0
        for size in self.level_sizes:
            level_scores = tf.reshape(scores[:, offset: offset + size], [batch, size * self.num_classes])
            top_scores, top_index = tf.math.top_k(level_scores, k=min(self.pre_nms_top_k, size * self.num_classes))
            anchor_index = top_index // self.num_classes + offset
            level_deltas = tf.gather(deltas, anchor_index, batch_dims=1)
            boxes_list.append(box_ops.decode(level_deltas, tf.gather(self.anchors, anchor_index)))
            scores_list.append(top_scores)
            classes_list.append(top_index % self.num_classes)
            offset += size
        return tf.concat(boxes_list, 1), tf.concat(scores_list, 1), tf.concat(classes_list, 1)

    def __call__(self, predictions, scales):
        boxes, scores, classes = self.candidates(predictions)
        boxes = box_ops.clip(boxes, *self.image_size)
        # Class-aware NMS: each candidate scores only in its own class column.
        class_scores = tf.one_hot(classes, self.num_classes) * scores[..., None]
        nms = tf.image.combined_non_max_suppression(
            boxes[:, :, None, :], class_scores, max_output_size_per_class=self.max_detections,
            max_total_size=self.max_detections, iou_threshold=self.nms_iou,
            score_threshold=self.score_threshold, clip_boxes=False)
        final_boxes = box_ops.shrink(nms.nmsed_boxes, self.box_shrink) if self.box_shrink != 1.0 else nms.nmsed_boxes
        final_boxes = final_boxes / tf.reshape(tf.cast(scales, tf.float32), [-1, 1, 1])
        valid = tf.sequence_mask(nms.valid_detections, self.max_detections)
        return {"boxes": tf.where(valid[..., None], final_boxes, 0.0), "scores": nms.nmsed_scores,
                "classes": tf.cast(nms.nmsed_classes, tf.int32), "num_detections": nms.valid_detections}


def postprocessor_from_config(config, anchors, level_sizes) -> Postprocessor:
    post = config.postprocessing
    return Postprocessor(anchors, level_sizes, tuple(config.preprocessing.image_size),
                         num_classes=config.model.num_classes, score_threshold=post.score_threshold,
                         pre_nms_top_k=post.pre_nms_top_k, nms_iou=post.nms_iou,
                         max_detections=post.max_detections, box_shrink=post.box_shrink)
