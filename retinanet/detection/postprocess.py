"""Network outputs -> fixed-size detections in original pixels, in-graph for whole batches.

This is the one detections path of validation, evaluation, inference and export. Its input is
one or more `NetworkPass`es over the same batch (the plain input, its mirror image with flip
TTA, other models of an ensemble) plus each image's letterbox info: the scale from original
to input pixels and the original (height, width). Each pass: sigmoid scores, top-k per pyramid
level, decode with the encoder's variance, clip to the input, class-aware NMS; mirrored passes
are mirrored back. Several passes are merged by weighted box fusion (`weighted_box_fusion`,
as the RSNA top solutions merged flip TTA and folds). Then the box scores are gated or
rescaled by the image-level probability, the boxes shrunk about their centres, divided by the
scale and clipped to the original image. The letterbox puts the image in the top-left corner
of the input, so the offset between the two frames is zero.

`retinanet.detection.detections` turns the padded result into per-image numpy arrays and runs datasets.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import tensorflow as tf

from retinanet.detection import boxes as box_ops
from retinanet.detection import defaults

if TYPE_CHECKING:
    import keras

# Boxes of the two TTA passes join one cluster above this IoU (the ensemble-boxes default).
FUSION_IOU = 0.55


def weighted_box_fusion(boxes: tf.Tensor, scores: tf.Tensor, classes: tf.Tensor, valid: tf.Tensor, *,
                        iou_threshold: float = FUSION_IOU,
                        num_passes: int = 2) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
    """Weighted box fusion (Solovyev et al. 2021, as `ensemble_boxes`, conf_type "avg") per image.

    boxes [B, N, 4] `x1, y1, x2, y2`, scores [B, N], classes [B, N] int, valid [B, N] bool: the
    pooled detections of `num_passes` passes, in any order; rows with valid False are padding.

    In descending score, each box joins the cluster of its class whose fused box overlaps it
    with IoU > `iou_threshold` (the best such), else it starts a new cluster. A cluster's box
    is the score-weighted mean of its members, its score the mean member score times
    min(members, num_passes) / num_passes, so a box seen by one pass only loses weight.

    Returns (boxes [B, N, 4], scores [B, N], classes [B, N] int32, num_clusters [B] int32), the
    clusters sorted by descending fused score and zero-padded.
    """
    boxes = tf.convert_to_tensor(boxes, tf.float32)
    scores = tf.convert_to_tensor(scores, tf.float32)
    classes = tf.cast(classes, tf.int32)
    valid = tf.cast(valid, tf.bool)
    size = tf.shape(scores)[1]
    # Visit in descending score; padding rows go last and are skipped.
    order = tf.argsort(tf.where(valid, scores, -1.0), axis=1, direction="DESCENDING", stable=True)
    boxes, scores = tf.gather(boxes, order, batch_dims=1), tf.gather(scores, order, batch_dims=1)
    classes, valid = tf.gather(classes, order, batch_dims=1), tf.gather(valid, order, batch_dims=1)

    def body(index, weighted_sum, weight, members, cluster_class, count):
        box, score, label, active = boxes[:, index], scores[:, index], classes[:, index], valid[:, index]
        fused = weighted_sum / tf.maximum(weight, 1e-12)[..., None]
        overlap = box_ops.iou(fused, box[:, None, :])  # [B, N]
        eligible = (tf.range(size)[None] < count[:, None]) & tf.equal(cluster_class, label[:, None])
        overlap = tf.where(eligible, overlap, -1.0)
        best = tf.argmax(overlap, axis=1, output_type=tf.int32)
        matched = tf.reduce_max(overlap, axis=1) > iou_threshold
        target = tf.where(matched, best, count)
        update = tf.one_hot(target, size) * tf.cast(active, tf.float32)[:, None]  # [B, N]
        weighted_sum += update[..., None] * (score[:, None] * box)[:, None, :]
        weight += update * score[:, None]
        members += update
        cluster_class = tf.where(update > 0, label[:, None], cluster_class)
        count += tf.cast(active & ~matched, tf.int32)
        return index + 1, weighted_sum, weight, members, cluster_class, count

    batch = tf.shape(scores)[0]
    zeros = tf.zeros([batch, size])
    state = (0, tf.zeros([batch, size, 4]), zeros, zeros, tf.zeros([batch, size], tf.int32),
             tf.zeros([batch], tf.int32))
    _, weighted_sum, weight, members, cluster_class, count = tf.while_loop(lambda index, *_: index < size, body,
                                                                           state)
    exists = members > 0
    fused_boxes = weighted_sum / tf.maximum(weight, 1e-12)[..., None]
    fused_scores = tf.math.divide_no_nan(weight, members) * tf.minimum(members, float(num_passes)) / num_passes
    fused_scores = tf.where(exists, fused_scores, 0.0)
    order = tf.argsort(tf.where(exists, fused_scores, -1.0), axis=1, direction="DESCENDING", stable=True)
    fused_boxes = tf.where(exists[..., None], fused_boxes, 0.0)
    return (tf.gather(fused_boxes, order, batch_dims=1), tf.gather(fused_scores, order, batch_dims=1),
            tf.gather(cluster_class, order, batch_dims=1), count)


def no_gating(scores: tf.Tensor, num_detections: tf.Tensor, probabilities: tf.Tensor,
              threshold: float) -> tuple[tf.Tensor, tf.Tensor]:
    """Scores [B, D] and num_detections [B] unchanged."""
    return scores, num_detections


def gate_images(scores: tf.Tensor, num_detections: tf.Tensor, probabilities: tf.Tensor,
                threshold: float) -> tuple[tf.Tensor, tf.Tensor]:
    """Empty the images whose probability [B] is below `threshold`: their scores [B, D] become 0
    and their num_detections [B] 0."""
    keep = probabilities >= threshold
    return tf.where(keep[:, None], scores, 0.0), tf.where(keep, num_detections, 0)


def multiply_scores(scores: tf.Tensor, num_detections: tf.Tensor, probabilities: tf.Tensor,
                    threshold: float) -> tuple[tf.Tensor, tf.Tensor]:
    """Scale each image's box scores [B, D] by its probability [B]; `threshold` is not used."""
    return scores * probabilities[:, None], num_detections


# postprocessing.image_gating -> (scores [B, D], num_detections [B], probabilities [B], threshold)
# -> (scores, num_detections). The config accepts exactly these names.
IMAGE_GATINGS = {"none": no_gating, "gate": gate_images, "multiply": multiply_scores}


class NetworkPass(NamedTuple):
    """One network pass over a batch of B images, an input of `Postprocessor` (a named tuple, so
    that lists of them pass into a tf.function).

    Args:
        predictions: [B, A, 4 + K] box deltas (encoded as `boxes.encode`) and class logits, one
            row per anchor of the postprocessor.
        image_probabilities: [B] probabilities in [0, 1] from the image-level head, or None (the
            default) for a network without it.
        mirrored: The pass saw the images flipped left-right; its boxes are mirrored back.
            Default False.
    """

    predictions: tf.Tensor
    image_probabilities: tf.Tensor | None = None
    mirrored: bool = False


def network_pass(outputs: dict[str, tf.Tensor], mirrored: bool = False) -> NetworkPass:
    """A Keras RetinaNet's output dict ("predictions" [B, A, 4 + K], optional "image_logits" [B, 1])
    -> NetworkPass (image probabilities [B] = sigmoid of the logits)."""
    probabilities = None
    if "image_logits" in outputs:
        probabilities = tf.sigmoid(tf.reshape(tf.cast(outputs["image_logits"], tf.float32), [-1]))
    return NetworkPass(outputs["predictions"], probabilities, mirrored)


def keep_above_in_graph(result: dict[str, tf.Tensor], threshold: float | tf.Tensor) -> dict[str, tf.Tensor]:
    """A `Postprocessor` result without the detections scoring below `threshold` (in-graph).

    The valid detections of an image are its first num_detections, in descending score, so the
    ones kept are again a prefix: only the counts and the padding change.
    """
    size = tf.shape(result["scores"])[1]
    keep = tf.sequence_mask(result["num_detections"], size) & (result["scores"] >= threshold)
    return {**result, "num_detections": tf.reduce_sum(tf.cast(keep, tf.int32), axis=1),
            "boxes": tf.where(keep[..., None], result["boxes"], 0.0), "scores": tf.where(keep, result["scores"], 0.0),
            "classes": tf.where(keep, result["classes"], 0)}


class Postprocessor:
    """Callable: (passes: list of NetworkPass, scales [B], original_sizes [B, 2]) -> dict of

    "boxes" [B, D, 4] (`x1, y1, x2, y2`, original pixels, inside the original image), "scores"
    [B, D] (descending), "classes" [B, D] int32 and "num_detections" [B] int32, padded with
    zeros past each count; plus "image_probabilities" [B] (the mean over the passes) when the
    passes carry them. D = max_detections. Every pass must come from a network with this
    postprocessor's input size and anchors.

    `run_model` gives the passes of one Keras model (two with `flip_tta`); `detect` runs a list
    of models and post-processes all their passes together.

    Args:
        anchors: Anchor boxes [A, 4] `x1, y1, x2, y2` in network-input pixels (`AnchorSet.boxes`).
        level_sizes: Anchors on each pyramid level, in order, counts summing to A
            (`AnchorSet.level_sizes`).
        image_size: The network input (height, width) in pixels; boxes are clipped to it before NMS.
        num_classes: K, the number of object classes (class logits per anchor), a count. Default
            `defaults.NUM_CLASSES` (1).
        candidate_score_threshold: Class probability in [0, 1]; a candidate must score above it to
            enter NMS. Default `defaults.CANDIDATE_SCORE_THRESHOLD` (0.05).
        pre_nms_top_k: (anchor, class) candidates kept per pyramid level before NMS, a count.
            Default `defaults.PRE_NMS_TOP_K` (1000).
        nms_iou: IoU, a fraction in [0, 1]; NMS drops a box whose IoU with a better-scoring box of
            its class is above it. Default `defaults.NMS_IOU` (0.5).
        max_detections: D, detections kept per image (and per class in NMS), a count. Default
            `defaults.MAX_DETECTIONS` (100).
        box_shrink: Factor (a fraction, 1 keeps them) on each detection's width and height about
            its centre, applied after fusion and gating. Default `defaults.BOX_SHRINK` (1.0).
        box_voting_iou: IoU, a fraction in [0, 1]; above 0, box voting: each box NMS keeps becomes
            the score-weighted mean of the candidates of its class (itself among them) that overlap
            it with at least this IoU, so that the many anchors that found one opacity outline it
            together. 0 keeps NMS's boxes. Default `defaults.BOX_VOTING_IOU` (0.0).
        flip_tta: `run_model` also runs the left-right mirrored images, and their pass is fused
            with the plain one. Default `defaults.FLIP_TTA` (False).
        image_gating: A name of `IMAGE_GATINGS`: "none", "gate" (empty the images whose image
            probability is below `image_gate_threshold`) or "multiply" (scale the box scores by
            it); other than "none" needs passes with image probabilities. Default
            `defaults.IMAGE_GATING` ("none").
        image_gate_threshold: Image probability in [0, 1] below which "gate" empties an image.
            Default `defaults.IMAGE_GATE_THRESHOLD` (0.5).
        fusion_iou: IoU, a fraction in [0, 1]; with several passes, a box joins a fused cluster
            of its class above it (`weighted_box_fusion`). Default `FUSION_IOU` (0.55).

    Raises:
        ValueError: An unknown `image_gating`.
    """

    def __init__(self, anchors: np.ndarray | tf.Tensor, level_sizes: list[int], image_size: tuple[int, int], *,
                 num_classes: int = defaults.NUM_CLASSES,
                 candidate_score_threshold: float = defaults.CANDIDATE_SCORE_THRESHOLD,
                 pre_nms_top_k: int = defaults.PRE_NMS_TOP_K, nms_iou: float = defaults.NMS_IOU,
                 max_detections: int = defaults.MAX_DETECTIONS, box_shrink: float = defaults.BOX_SHRINK,
                 box_voting_iou: float = defaults.BOX_VOTING_IOU, flip_tta: bool = defaults.FLIP_TTA,
                 image_gating: str = defaults.IMAGE_GATING,
                 image_gate_threshold: float = defaults.IMAGE_GATE_THRESHOLD, fusion_iou: float = FUSION_IOU):
        if image_gating not in IMAGE_GATINGS:
            raise ValueError(f"image_gating must be one of {', '.join(IMAGE_GATINGS)}, got {image_gating!r}")
        self.anchors = tf.convert_to_tensor(anchors, tf.float32)
        self.level_sizes = list(level_sizes)
        self.image_size = tuple(image_size)
        self.num_classes = num_classes
        self.candidate_score_threshold = candidate_score_threshold
        self.pre_nms_top_k = pre_nms_top_k
        self.nms_iou = nms_iou
        self.max_detections = max_detections
        self.box_shrink = box_shrink
        self.box_voting_iou = box_voting_iou
        self.flip_tta = flip_tta
        self.image_gating = image_gating
        self.image_gate_threshold = image_gate_threshold
        self.fusion_iou = fusion_iou

    def candidates(self, predictions: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        """predictions [B, A, 4 + K] -> the top-k (anchor, class) pairs of each level: boxes [B, C, 4]
        input pixels (decoded, not clipped), scores [B, C] probabilities, classes [B, C] int32."""
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

    def suppress(self, predictions: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
        """predictions [B, A, 4 + K] -> (boxes [B, D, 4] input pixels, scores [B, D], classes [B, D] int32,
        num_detections [B] int32): decoded, clipped, class-aware NMS, sorted by descending score."""
        boxes, scores, classes = self.candidates(predictions)
        boxes = box_ops.clip(boxes, *self.image_size)
        # Class-aware NMS: each candidate scores only in its own class column.
        class_scores = tf.one_hot(classes, self.num_classes) * scores[..., None]
        nms = tf.image.combined_non_max_suppression(
            boxes[:, :, None, :], class_scores, max_output_size_per_class=self.max_detections,
            max_total_size=self.max_detections, iou_threshold=self.nms_iou,
            score_threshold=self.candidate_score_threshold, clip_boxes=False)
        kept_classes = tf.cast(nms.nmsed_classes, tf.int32)
        kept = nms.nmsed_boxes
        if self.box_voting_iou > 0:
            kept = self.vote(kept, kept_classes, boxes, scores, classes)
        return kept, nms.nmsed_scores, kept_classes, nms.valid_detections

    def vote(self, kept: tf.Tensor, kept_classes: tf.Tensor, candidates: tf.Tensor, candidate_scores: tf.Tensor,
             candidate_classes: tf.Tensor) -> tf.Tensor:
        """Box voting: kept boxes [B, D, 4] (classes [B, D]) -> each the score-weighted mean of the
        candidates [B, C, 4] (scores [B, C], classes [B, C]) of its class scoring above
        candidate_score_threshold whose IoU with it is at least box_voting_iou. A kept box is one
        of its own candidates; padding rows keep their zeros."""
        overlap = box_ops.iou(kept[:, :, None, :], candidates[:, None, :, :])  # [B, D, C]
        voters = ((overlap >= self.box_voting_iou)
                  & tf.equal(kept_classes[:, :, None], candidate_classes[:, None, :])
                  & (candidate_scores > self.candidate_score_threshold)[:, None, :])
        weights = tf.where(voters, candidate_scores[:, None, :], 0.0)
        total = tf.reduce_sum(weights, axis=-1, keepdims=True)
        voted = tf.einsum("bdc,bck->bdk", weights, candidates) / tf.maximum(total, 1e-12)
        return tf.where(total > 0, voted, kept)

    def unmirror(self, boxes: tf.Tensor) -> tf.Tensor:
        """Boxes [..., 4] found on the mirrored input -> the same boxes on the input (x -> width - x)."""
        width = float(self.image_size[1])
        x1, y1, x2, y2 = tf.unstack(boxes, axis=-1)
        return tf.stack([width - x2, y1, width - x1, y2], axis=-1)

    def fuse(self, detections: list[tuple[tf.Tensor, ...]]) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
        """Several `suppress` results over the same images, boxes in the same frame -> one, by weighted
        box fusion (one pass per result); cut to the D most confident, in the `suppress` layout:
        (boxes [B, D, 4], scores [B, D], classes [B, D] int32, num_detections [B] int32)."""
        valid = tf.concat([tf.sequence_mask(count, self.max_detections) for *_, count in detections], axis=1)
        fused_boxes, fused_scores, fused_classes, fused_count = weighted_box_fusion(
            *(tf.concat([item[part] for item in detections], axis=1) for part in range(3)), valid,
            iou_threshold=self.fusion_iou, num_passes=len(detections))
        keep = self.max_detections
        return (fused_boxes[:, :keep], fused_scores[:, :keep], fused_classes[:, :keep],
                tf.minimum(fused_count, keep))

    def gate(self, scores: tf.Tensor, num_detections: tf.Tensor,
             image_probabilities: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """Apply `image_gating` (IMAGE_GATINGS) with probabilities [B]: "gate" empties images below the
        threshold, "multiply" scales their scores by the probability. -> (scores [B, D], num_detections [B])."""
        probabilities = tf.reshape(tf.cast(image_probabilities, tf.float32), [-1])
        return IMAGE_GATINGS[self.image_gating](scores, num_detections, probabilities, self.image_gate_threshold)

    def image_probabilities(self, passes: list[NetworkPass]) -> tf.Tensor | None:
        """The mean image probability [B] over the passes, or None when no pass has one."""
        with_head = [item.image_probabilities is not None for item in passes]
        if not any(with_head):
            if self.image_gating != "none":
                raise ValueError(f"postprocessing.image_gating={self.image_gating} needs the image head "
                                 "(model.image_head: true)")
            return None
        if not all(with_head):
            raise ValueError("some passes have image probabilities and some not: mix no models with and "
                             "without the image head")
        return tf.add_n([tf.reshape(tf.cast(item.image_probabilities, tf.float32), [-1])
                         for item in passes]) / len(passes)

    def __call__(self, passes: list[NetworkPass], scales: tf.Tensor,
                 original_sizes: tf.Tensor) -> dict[str, tf.Tensor]:
        """passes, scales [B] (original -> input pixels), original_sizes [B, 2] (height, width) ->
        the result dict of the class docstring."""
        if not passes:
            raise ValueError("no network pass to post-process")
        detections = []
        for item in passes:
            boxes, scores, classes, count = self.suppress(item.predictions)
            detections.append((self.unmirror(boxes) if item.mirrored else boxes, scores, classes, count))
        boxes, scores, classes, count = detections[0] if len(detections) == 1 else self.fuse(detections)
        probabilities = self.image_probabilities(passes)
        if probabilities is not None:
            scores, count = self.gate(scores, count, probabilities)
        if self.box_shrink != 1.0:
            boxes = box_ops.shrink(boxes, self.box_shrink)
        boxes = to_original_pixels(boxes, scales, original_sizes)
        valid = tf.sequence_mask(count, self.max_detections)
        result = {"boxes": tf.where(valid[..., None], boxes, 0.0), "scores": tf.where(valid, scores, 0.0),
                  "classes": tf.where(valid, classes, 0), "num_detections": count}
        if probabilities is not None:
            result["image_probabilities"] = probabilities
        return result

    def run_model(self, model: keras.Model, images: tf.Tensor) -> list[tuple[dict[str, tf.Tensor], bool]]:
        """The model's output dicts for images [B, H, W, C] (normalised) -> [(outputs, mirrored)],
        the plain pass first; with `flip_tta` the mirrored images run in the same batch."""
        if not self.flip_tta:
            return [(model(images, training=False), False)]
        outputs = model(tf.concat([images, tf.reverse(images, axis=[2])], axis=0), training=False)
        batch = tf.shape(images)[0]
        return [({key: value[:batch] for key, value in outputs.items()}, False),
                ({key: value[batch:] for key, value in outputs.items()}, True)]

    def detect(self, models: list[keras.Model], images: tf.Tensor, scales: tf.Tensor,
               original_sizes: tf.Tensor) -> dict[str, tf.Tensor]:
        """Model pass(es) of every model of `models` (a list: an ensemble fuses all their passes)
        and post-processing: images [B, H, W, C] (normalised), scales [B], original_sizes [B, 2]."""
        passes = [network_pass(outputs, mirrored) for model in models
                  for outputs, mirrored in self.run_model(model, images)]
        return self(passes, scales, original_sizes)


def to_original_pixels(boxes: tf.Tensor, scales: tf.Tensor, original_sizes: tf.Tensor) -> tf.Tensor:
    """Boxes [B, D, 4] in letterboxed input pixels -> original pixels, clipped to each original image.

    scales [B]: original -> input factor; original_sizes [B, 2]: (height, width).
    """
    boxes = boxes / tf.reshape(tf.cast(scales, tf.float32), [-1, 1, 1])
    sizes = tf.cast(original_sizes, tf.float32)
    limits = tf.stack([sizes[:, 1], sizes[:, 0], sizes[:, 1], sizes[:, 0]], axis=1)[:, None, :]
    return tf.clip_by_value(boxes, 0.0, limits)

