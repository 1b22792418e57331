"""Segmentation backends (instance matching's instance detector): the registry, the
depth-and-colour segmenter on rendered sim frames against MuJoCo's true segmentation, and
SAM / SAM 2 / SAM 3 through `transformers` on tiny random checkpoints saved to disk (their
code paths, prompts and mask geometry; random weights segment nothing meaningful)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kil.errors import ConfigError
from kil.msgs import RGBD
from kil.perception.segmentation.base import SEGMENTERS, Instances, Prompt, load_segmenter

H, W = 60, 80


def _frame(rng: np.random.Generator) -> RGBD:
    rgb = rng.integers(0, 255, (H, W, 3), dtype=np.uint8)
    K = np.array([[70.0, 0, W / 2], [0, 70.0, H / 2], [0, 0, 1]])
    return RGBD(1, "camera", rgb, np.full((H, W), 0.8, np.float32), K, "base", np.eye(4))


def _config(tmp_path, backend: str, weights: str = "", **extra) -> str:
    lines = [f"backend: {backend}", f"weights: '{weights}'", "min_score: 0.0", "min_area_px: 1", "max_instances: 8"]
    lines += [f"{k}: {v}" for k, v in extra.items()]
    path = tmp_path / f"{backend}.yaml"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def test_backends_are_found_by_name_and_bad_configs_are_one_line_errors(tmp_path):
    assert SEGMENTERS.names() == ["depth_colour", "sam", "sam2", "sam3"]
    with pytest.raises(ConfigError, match=r"backend: unknown segmentation backend 'sam9' \(known: depth_colour, sam, sam2, sam3\)"):
        load_segmenter(_config(tmp_path, "sam9"))
    missing = tmp_path / "nowhere"
    with pytest.raises(ConfigError, match=rf"weights: no SAM 3 segmenter checkpoint at {missing} \(no such file or directory\)"):
        load_segmenter(_config(tmp_path, "sam3", str(missing)))
    with pytest.raises(ConfigError, match="min_height_m"):
        load_segmenter(_config(tmp_path, "depth_colour", min_height_m=0.5, max_height_m=0.1))
    with pytest.raises(ValueError, match="Prompt: give a text, points, or both"):
        Prompt()


def test_segment_keeps_the_best_instances_per_prompt():
    """The base class's filter: min_score, min_area_px, max_instances per prompt, best first."""
    from kil.perception.segmentation.base import Segmenter, SegmenterConfig

    masks = np.zeros((5, H, W), bool)
    for i in range(5):
        masks[i, :, i * 10:(i + 1) * 10] = True
    masks[4, :, :] = False
    masks[4, 0, 0] = True  # one pixel

    class Fixed(Segmenter):
        needs_weights = False

        def _segment(self, frame, prompts):
            return Instances(masks, np.array([0.9, 0.2, 0.7, 0.8, 0.95], np.float32), np.array([0, 0, 0, 1, 1]))

    out = Fixed(SegmenterConfig("fixed", min_score=0.5, min_area_px=10, max_instances=1)).segment(_frame(np.random.default_rng(0)), [])
    assert out.score.tolist() == pytest.approx([0.9, 0.8]) and out.prompt.tolist() == [0, 1]
    assert np.array_equal(out.masks, masks[[0, 3]])
    assert len(out.of(1)) == 1 and len(Instances(masks[:1], np.ones(1), np.array([-1])).of(3)) == 1  # class-agnostic answers any


@pytest.mark.sim
@pytest.mark.parametrize("variation,seed", [("in", 11), ("obj", 12), ("scene", 13), ("scene", 14)])
def test_depth_and_colour_instances_match_the_true_objects(variation, seed):
    """Every task object, the tray and every distractor of a rendered scene is one instance
    (IoU >= 0.85 with MuJoCo's segmentation where it labels pixels), and no confident
    instance is mostly arm."""
    from kil.sim.episode import make_world

    world = make_world("pick_place", "panda", variation, seed)
    try:
        view = world.capture_view()
    finally:
        world.close()
    frame = RGBD(0, "camera", view.rgb, view.depth, view.K, "base", view.T_base_camera)
    found = load_segmenter("depth_colour").segment(frame, [])
    assert (found.prompt == -1).all() and np.all(np.diff(found.score) <= 0)
    labelled = view.bodies >= 0  # some curved surfaces render without a geom id: no truth there
    for body in [*view.objects, *view.distractors]:
        truth = view.bodies == body
        # intersection over union, counting only pixels the truth labels
        iou = max((m & truth).sum() / ((m & labelled) | truth).sum() for m in found.masks)
        assert iou >= 0.85, (variation, seed, body, iou)
    robot = np.isin(view.bodies, list(view.robot))
    for mask, score in zip(found.masks, found.score):
        assert score < 0.9 or (mask & robot).sum() < 0.5 * mask.sum()


# ----------------------------------------------------------------------------- tiny SAMs


def _save_sam(tmp_path):
    from transformers import SamConfig, SamMaskDecoderConfig, SamModel, SamPromptEncoderConfig, SamVisionConfig

    torch.manual_seed(0)
    S, P = 64, 8
    config = SamConfig(
        vision_config=SamVisionConfig(hidden_size=32, output_channels=32, num_hidden_layers=2, num_attention_heads=2, image_size=S,
                                      patch_size=P, window_size=4, global_attn_indexes=[1], num_pos_feats=16, mlp_dim=64),
        prompt_encoder_config=SamPromptEncoderConfig(hidden_size=32, image_size=S, patch_size=P, mask_input_channels=4),
        mask_decoder_config=SamMaskDecoderConfig(hidden_size=32, mlp_dim=64, num_hidden_layers=2, num_attention_heads=2, iou_head_hidden_dim=32),
    )
    path = tmp_path / "sam"
    SamModel(config).eval().save_pretrained(path)
    return path


def test_sam_points_give_one_mask_each_as_sam_processor_prepares_and_reads_them(tmp_path):
    """SAM (tiny random weights from a local directory): one instance per prompt point, owned
    by its prompt; the letterboxed input, the point coordinates and the masks agree with
    `transformers`' SamProcessor (the only SAM-family processor usable without torchvision)."""
    from transformers import SamImageProcessor, SamProcessor

    weights = _save_sam(tmp_path)
    segmenter = load_segmenter(_config(tmp_path, "sam", str(weights)))
    frame = _frame(np.random.default_rng(1))
    prompts = [Prompt(text="block", points=np.array([[10.0, 20.0], [60.0, 40.0]])), Prompt(points=np.array([[40.0, 5.0]]))]
    found = segmenter._segment(frame, prompts)
    assert found.masks.shape == (3, H, W) and found.prompt.tolist() == [0, 0, 1]
    assert ((0 <= found.score) & (found.score <= 1)).all()

    S = segmenter.size
    processor = SamProcessor(SamImageProcessor(size={"longest_edge": S}, pad_size={"height": S, "width": S}))
    points = [[10.0, 20.0], [60.0, 40.0], [40.0, 5.0]]
    inputs = processor(images=frame.rgb, input_points=[[[p] for p in points]], input_labels=[[[1]] * 3], return_tensors="pt")
    assert np.allclose(segmenter.model_points(np.array(points), (H, W)), inputs["input_points"][0, :, 0].numpy(), atol=1e-4)
    ours = segmenter.pixels(frame.rgb)
    assert ours.shape == inputs["pixel_values"].shape
    assert (ours - inputs["pixel_values"]).abs().mean() < 0.05  # PIL's and torch's antialiased resize differ by rounding
    logits = torch.randn(3, 16, 16)
    theirs = processor.post_process_masks(logits[None, :, None], inputs["original_sizes"], inputs["reshaped_input_sizes"])[0][:, 0]
    assert np.array_equal(segmenter.masks(logits, (H, W)), theirs.numpy())
    with pytest.raises(ValueError, match="takes point prompts; got none"):
        segmenter.segment(frame, [Prompt(text="block")])


def test_sam2_points_stretch_to_the_model_square(tmp_path):
    from transformers import (Sam2Config, Sam2HieraDetConfig, Sam2MaskDecoderConfig, Sam2Model, Sam2PromptEncoderConfig,
                              Sam2VisionConfig)

    torch.manual_seed(0)
    S = 128
    backbone = Sam2HieraDetConfig(hidden_size=12, image_size=S, patch_kernel_size=7, patch_stride=4, patch_padding=3,
                                  blocks_per_stage=[1, 1, 2, 1], embed_dim_per_stage=[12, 24, 48, 96],
                                  num_attention_heads_per_stage=[1, 1, 2, 2], window_size_per_stage=[4, 4, 4, 4],
                                  global_attention_blocks=[3], window_positional_embedding_background_size=[2, 2])
    vision = Sam2VisionConfig(backbone_config=backbone, backbone_channel_list=[96, 48, 24, 12],
                              backbone_feature_sizes=[[S // 4, S // 4], [S // 8, S // 8], [S // 16, S // 16]], fpn_hidden_size=32)
    config = Sam2Config(vision_config=vision,
                        prompt_encoder_config=Sam2PromptEncoderConfig(hidden_size=32, image_size=S, patch_size=16, mask_input_channels=8),
                        mask_decoder_config=Sam2MaskDecoderConfig(hidden_size=32, mlp_dim=64, num_hidden_layers=2, num_attention_heads=4,
                                                                  iou_head_hidden_dim=32))
    Sam2Model(config).eval().save_pretrained(tmp_path / "sam2")
    segmenter = load_segmenter(_config(tmp_path, "sam2", str(tmp_path / "sam2")))
    assert segmenter.size == S
    frame = _frame(np.random.default_rng(2))
    found = segmenter._segment(frame, [Prompt(points=np.array([[5.0, 5.0]])), Prompt(points=np.array([[70.0, 50.0], [30.0, 30.0]]))])
    assert found.masks.shape == (3, H, W) and found.prompt.tolist() == [0, 1, 1]
    assert np.allclose(segmenter.model_points(np.array([[W, H]], float), (H, W)), [[S, S]])
    assert segmenter.pixels(frame.rgb).shape == (1, 3, S, S)


def _tiny_clip_tokenizer(words):
    """A byte-level BPE CLIP tokenizer built in memory, each word one token."""
    from transformers import CLIPTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    symbols = list(bytes_to_unicode().values())
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for s in symbols + [s + "</w>" for s in symbols]:
        vocab.setdefault(s, len(vocab))
    merges = []
    for word in words:
        current = word[0]
        for i, ch in enumerate(word[1:], 1):
            nxt = ch + ("</w>" if i == len(word) - 1 else "")
            merges.append((current, nxt))
            current += nxt
            vocab.setdefault(current, len(vocab))
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=32)


def test_sam3_text_prompts_find_instances_per_category(tmp_path):
    """SAM 3 (tiny random weights and tokenizer from a local directory): every query of each
    text prompt is an instance owned by that prompt, scored query x presence probability;
    encoding the image once gives what the model's one-call forward gives."""
    from transformers import (Sam3Config, Sam3DETRDecoderConfig, Sam3DETREncoderConfig, Sam3GeometryEncoderConfig,
                              Sam3MaskDecoderConfig, Sam3Model, Sam3VisionConfig, Sam3ViTConfig)

    torch.manual_seed(0)
    tokenizer = _tiny_clip_tokenizer(("block", "tray"))
    S, P, queries = 112, 14, 5
    config = Sam3Config(
        vision_config=Sam3VisionConfig(
            backbone_config=Sam3ViTConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=S,
                                          patch_size=P, window_size=4, global_attn_indexes=[1], pretrain_image_size=S),
            fpn_hidden_size=32, scale_factors=[2.0, 1.0], backbone_feature_sizes=[[2 * S // P, 2 * S // P], [S // P, S // P]]),
        text_config=dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, projection_dim=32, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=32, hidden_act="gelu", eos_token_id=tokenizer.eos_token_id,
                         bos_token_id=tokenizer.bos_token_id, pad_token_id=tokenizer.pad_token_id),
        geometry_encoder_config=Sam3GeometryEncoderConfig(hidden_size=32, num_layers=1, num_attention_heads=2, intermediate_size=64,
                                                          mask_fuser_hidden_size=32, mask_fuser_num_layers=1),
        detr_encoder_config=Sam3DETREncoderConfig(hidden_size=32, num_layers=1, num_attention_heads=2, intermediate_size=64),
        detr_decoder_config=Sam3DETRDecoderConfig(hidden_size=32, num_layers=1, num_queries=queries, num_attention_heads=2, intermediate_size=64),
        mask_decoder_config=Sam3MaskDecoderConfig(hidden_size=32, num_upsampling_stages=2, num_attention_heads=2),
    )
    weights = tmp_path / "sam3"
    Sam3Model(config).eval().save_pretrained(weights)
    tokenizer.save_pretrained(weights)
    segmenter = load_segmenter(_config(tmp_path, "sam3", str(weights)))
    frame = _frame(np.random.default_rng(3))
    found = segmenter._segment(frame, [Prompt(text="block"), Prompt(points=np.array([[1.0, 1.0]])), Prompt(text="tray")])
    assert found.masks.shape == (2 * queries, H, W) and found.prompt.tolist() == [0] * queries + [2] * queries
    assert ((0 <= found.score) & (found.score <= 1)).all()

    tokens = tokenizer(["tray"], return_tensors="pt", padding="max_length", max_length=32)
    with torch.no_grad():
        direct = segmenter.model(pixel_values=segmenter.pixels(frame.rgb), input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"])
    expected = (direct.pred_logits[0].sigmoid() * direct.presence_logits[0].sigmoid()).numpy()
    assert np.allclose(found.score[queries:], expected, atol=1e-5)
    kept = segmenter.segment(frame, [Prompt(text="block")])
    assert len(kept) <= queries and np.all(np.diff(kept.score) <= 0)
    from dataclasses import replace

    threshold = float(np.median(expected))
    segmenter.config = replace(segmenter.config, min_score=threshold)  # only these queries' masks are made
    answering = segmenter._segment(frame, [Prompt(text="tray")])
    assert np.allclose(np.sort(answering.score), np.sort(expected[expected >= threshold]), atol=1e-5)
    assert answering.masks.shape == (int((expected >= threshold).sum()), H, W)


def test_a_frame_with_nothing_on_the_table_has_no_instances():
    found = load_segmenter("depth_colour").segment(_frame(np.random.default_rng(4)), [])  # one flat surface
    assert len(found) == 0 and found.masks.shape == (0, H, W)
