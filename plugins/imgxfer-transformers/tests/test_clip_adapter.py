"""The ``clip:PATH`` encoder and adapter of imgxfer-transformers (CLIP zero-shot,
Tip-Adapter, Tip-Adapter-F) and the CLIP score of synthetic images, with a tiny
random-weight CLIP built here from a config (hf_tiny_models.py; no download)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hf_tiny_models import save_tiny_blip, save_tiny_clip

from imgxfer.components.encoders.smallcnn import SmallCNN
from imgxfer.core.budget import Budget
from imgxfer.core.errors import UserError
from imgxfer.core.progress import NullProgress
from imgxfer.data.dataset import ImageDataset, TransferData
from imgxfer.nn.classifier import rebuild
from imgxfer.plugin import testing
from imgxfer_transformers.adapter import ClipAdapter
from imgxfer_transformers.clip import CLIP_MEAN, fill_prompt, make_clip_encoder

CPU = torch.device("cpu")
PROMPT = "a photo of a {label}."


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_clip(tmp_path_factory.mktemp("clip") / "clip")


@pytest.fixture(scope="module")
def data() -> TransferData:
    return testing.tiny_transfer_data()


def fit(adapter: ClipAdapter, clip: Path, data: TransferData, steps: int = 0):
    torch.manual_seed(0)
    return adapter.fit(make_clip_encoder(str(clip)), data, budget=Budget(steps).start(),
                       progress=NullProgress(), device=CPU).eval()


def test_encoder_contract_and_normalised_features(clip: Path) -> None:
    encoder = testing.check_encoder(make_clip_encoder, str(clip))
    assert (encoder.feature_dim, encoder.input_size, encoder.in_channels) == (16, (32, 32), 3)
    assert encoder.weights_source == str(clip.resolve()) and encoder.mean == (0.5, 0.5, 0.5)
    x = encoder.preprocess(torch.rand(2, 1, 20, 20))  # grey, any size
    assert x.shape == (2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(encoder(x).norm(dim=1), torch.ones(2), atol=1e-5)


@pytest.mark.parametrize("mode", ["zero-shot", "tip", "tip-f"])
def test_adapter_contract(clip: Path, mode: str) -> None:
    """Includes the round trip imgxfer predict does: a fresh encoder takes the saved
    state (with the cache, for tip) and gives the same logits."""
    model = testing.check_adapter(ClipAdapter, str(clip), encoder=make_clip_encoder(str(clip)),
                                  mode=mode, fit_steps=3)
    cached = 0 if mode == "zero-shot" else 6 + 6  # two shots and two synthetic per class
    assert model.encoder.feature_dim == 16 + cached


def test_zero_shot_is_clips_own_zero_shot_classifier(clip: Path, data: TransferData) -> None:
    """The head holds the scaled text embeddings: its logits are transformers'
    ``CLIPModel(...).logits_per_image`` for the class prompts."""
    from transformers import AutoTokenizer, CLIPModel

    model = fit(ClipAdapter(str(clip), mode="zero-shot", prompts=PROMPT), clip, data)
    images = model.encoder.preprocess(data.target_unlabelled.images.tensor())
    reference = CLIPModel.from_pretrained(clip, local_files_only=True).eval()
    tokens = AutoTokenizer.from_pretrained(clip, local_files_only=True)(
        [PROMPT.format(label=c) for c in data.class_names], padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = reference(**tokens, pixel_values=images).logits_per_image
        assert torch.allclose(model(images), expected, atol=1e-4)
    assert torch.count_nonzero(model.head.bias) == 0


def _aligned_clip(clip: Path, folder: Path, images: torch.Tensor, names: list[str]) -> Path:
    """A copy of the CLIP model whose text projection maps the prompt of class i exactly
    onto the embedding of ``images[i]`` (least squares with as many unknowns as needed)."""
    from transformers import AutoTokenizer, CLIPModel

    shutil.copytree(clip, folder)
    model = CLIPModel.from_pretrained(clip, local_files_only=True).eval()
    encoder = make_clip_encoder(str(clip))
    tokens = AutoTokenizer.from_pretrained(clip, local_files_only=True)(
        [fill_prompt(PROMPT, n, "") for n in names], padding=True, return_tensors="pt")
    with torch.no_grad():
        targets = encoder(encoder.preprocess(images))
        pooled = model.text_model(**tokens).pooler_output
        model.text_projection.weight.copy_(torch.linalg.lstsq(pooled, targets).solution.t())
    model.save_pretrained(folder)
    return folder


def test_zero_shot_picks_the_class_whose_prompt_matches_the_image(clip: Path, tmp_path: Path,
                                                                  data: TransferData) -> None:
    """A toy case where the answer is determined: each class's prompt embeds onto one
    image's embedding, so that image must be given that class, in any class order."""
    shapes = testing.tiny_shapes("ref", n_per_class=1, size=16)
    aligned = _aligned_clip(clip, tmp_path / "aligned", shapes.images.tensor(),
                            shapes.class_names)
    adapter = ClipAdapter(str(aligned), mode="zero-shot", prompts=PROMPT)
    for order in ([0, 1, 2], [2, 0, 1]):
        names = [shapes.class_names[i] for i in order]
        renamed = TransferData(data.source, ImageDataset(
            shapes.images.tensor(), torch.tensor(order).argsort(), names, "ref"),
            data.target_unlabelled)
        model = fit(adapter, aligned, renamed)
        with torch.no_grad():
            predicted = model(model.encoder.preprocess(shapes.images.tensor())).argmax(1)
        assert [names[p] for p in predicted.tolist()] == shapes.class_names


def test_tip_adapter_logits_are_its_formula(clip: Path, data: TransferData) -> None:
    """s f T^T + alpha exp(-beta (1 - f K^T)) L, with the synthetic images' labels weighted."""
    adapter = ClipAdapter(str(clip), mode="tip", alpha=2.0, beta=3.0, synthetic_weight=0.5)
    model = fit(adapter, clip, data)
    fresh = make_clip_encoder(str(clip)).eval()
    with torch.no_grad():
        def embed(ds: ImageDataset) -> torch.Tensor:
            return fresh(fresh.preprocess(ds.images.tensor()))

        keys = torch.cat([embed(data.target_labelled), embed(data.synthetic)])
        values = torch.cat([F.one_hot(data.target_labelled.labels, 3).float(),
                            0.5 * F.one_hot(data.synthetic.labels, 3).float()])
        text = adapter.text_head(data.class_names, data.target_labelled.description, CPU)
        x = fresh.preprocess(data.target_unlabelled.images.tensor())
        f = fresh(x)
        expected = f @ text.t() + 2.0 * torch.exp(-3.0 * (1 - f @ keys.t())) @ values
        assert torch.allclose(model(x), expected, atol=1e-4)
    assert adapter.uses == {"target_labelled", "synthetic"} and not adapter.trains_by_steps


def test_tip_adapter_remembers_its_shots(clip: Path, data: TransferData) -> None:
    """With a strong, sharp cache the shots themselves are given their own labels."""
    model = fit(ClipAdapter(str(clip), alpha=50.0, beta=200.0, synthetic_weight=0.0),
                clip, data)
    shots = data.target_labelled
    with torch.no_grad():
        predicted = model(model.encoder.preprocess(shots.images.tensor())).argmax(1)
    assert torch.equal(predicted, shots.labels)


def test_tip_f_trains_the_keys(clip: Path, data: TransferData) -> None:
    """The keys move and the loss on the cached shots (all of them: one batch) falls."""
    adapter = ClipAdapter(str(clip), mode="tip-f", synthetic_weight=0.0)
    assert adapter.trains_by_steps and adapter.uses == {"target_labelled"}
    model = fit(adapter, clip, data, steps=30)
    plain = fit(ClipAdapter(str(clip), mode="tip", synthetic_weight=0.0), clip, data)
    assert len(adapter.history) == 30
    shots = data.target_labelled
    with torch.no_grad():
        x = plain.encoder.preprocess(shots.images.tensor())
        before = F.cross_entropy(plain(x), shots.labels)
        after = F.cross_entropy(model(x), shots.labels)
    assert after < before and abs(before - adapter.history[0]["loss"]) < 1e-4
    assert not torch.allclose(model.encoder.cache.keys, plain.encoder.cache.keys)
    assert torch.equal(model.head.weight, plain.head.weight)  # T and L stay fixed


def test_no_shots_leaves_zero_shot(clip: Path, data: TransferData) -> None:
    empty = data.target_labelled.subset(torch.tensor([], dtype=torch.long))
    model = fit(ClipAdapter(str(clip)), clip, TransferData(data.source, empty,
                                                           data.target_unlabelled, None))
    assert model.encoder.cache is None and model.encoder.feature_dim == 16


def test_saved_cache_comes_back_in_a_fresh_encoder(clip: Path, data: TransferData) -> None:
    model = fit(ClipAdapter(str(clip)), clip, data)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    assert state["encoder.cache.keys"].shape == (12, 16)
    again = rebuild(make_clip_encoder(str(clip)), 3, state).eval()
    x = model.encoder.preprocess(data.target_unlabelled.images.tensor())
    with torch.no_grad():
        assert torch.allclose(again(x), model(x), atol=1e-6)


def test_the_run_encoder_must_be_the_same_clip(clip: Path, tmp_path: Path,
                                               data: TransferData) -> None:
    adapter = ClipAdapter(str(clip))
    for encoder, named in ((SmallCNN(width=4, input_size=16), "a SmallCNN"),
                           (make_clip_encoder(str(shutil.copytree(clip, tmp_path / "other"))),
                            f"clip:{tmp_path / 'other'}")):
        with pytest.raises(UserError, match=f"the run's encoder must be clip:{clip}") as error:
            adapter.fit(encoder, data, budget=Budget(0), progress=NullProgress(), device=CPU)
        assert f"(it is {named})" in str(error.value)


def test_folders_that_are_not_clip_are_one_sentence(clip: Path, tmp_path: Path) -> None:
    blip = save_tiny_blip(tmp_path / "blip")
    for factory in (make_clip_encoder, ClipAdapter):
        with pytest.raises(UserError, match=r"holds a 'blip' model, not CLIP \(model_type"):
            factory(str(blip))
        with pytest.raises(UserError, match=r"does not exist; give the folder of a CLIP model"):
            factory(str(tmp_path / "nowhere"))
    bare = save_tiny_clip(tmp_path / "bare" / "clip", processor=False)
    assert make_clip_encoder(str(bare)).mean == CLIP_MEAN  # no processor: OpenAI's statistics
    with pytest.raises(UserError, match="has no tokenizer; the CLIP adapter turns class names"):
        ClipAdapter(str(bare))


@pytest.mark.parametrize("options, message", [
    ({"mode": "few-shot"}, "mode must be one of zero-shot, tip, tip-f"),
    ({"prompts": "a photo"}, "must use {label}"),
    ({"prompts": "a {label} in {domain}"}, "must use {label} and may use {description}"),
    ({"prompts": []}, "prompts must be a template or a list of templates"),
    ({"alpha": 0.0}, "alpha must be above 0"),
    ({"synthetic_weight": -1.0}, "synthetic_weight must be 0 or more"),
])
def test_invalid_options_are_refused(clip: Path, options: dict, message: str) -> None:
    with pytest.raises(UserError, match=message.replace("{", r"\{").replace("}", r"\}")):
        ClipAdapter(str(clip), **options)


def test_prompt_ensembles_and_descriptions(clip: Path, data: TransferData) -> None:
    assert fill_prompt("a photo of a {description} {label}.", "t_shirt", "") == "a photo of a t shirt."
    one = ClipAdapter(str(clip), prompts="a {description} {label}")
    two = ClipAdapter(str(clip), prompts=["a {description} {label}", "a photo of a {label}"])
    a = one.text_head(["bar"], "tiny shape", CPU)
    b = two.text_head(["bar"], "tiny shape", CPU)
    assert a.shape == b.shape == (1, 16) and not torch.allclose(a, b)
    scale = one.model.logit_scale.exp()
    assert torch.allclose(b.norm(dim=1), scale * torch.ones(1), atol=1e-4)


def test_clip_scores_synthetic_images_for_the_filter(clip: Path, data: TransferData) -> None:
    from imgxfer.tasks.classify.stages.generate import filter_synthetic

    adapter = ClipAdapter(str(clip), prompts=PROMPT)
    synthetic = data.synthetic
    scores = adapter.score_images(synthetic.images.tensor(), synthetic.labels,
                                  class_names=synthetic.class_names, device=CPU)
    zero_shot = fit(ClipAdapter(str(clip), mode="zero-shot", prompts=PROMPT), clip, data)
    with torch.no_grad():
        proba = zero_shot(zero_shot.encoder.preprocess(synthetic.images.tensor())).softmax(1)
    assert torch.allclose(scores, proba.gather(1, synthetic.labels.view(-1, 1)).flatten(),
                          atol=1e-5)
    threshold = float(scores.median())
    kept_set, kept, info = filter_synthetic(synthetic, None, data.source, None, threshold, CPU,
                                            scorer=adapter, scorer_name=f"clip:{clip}")
    assert torch.equal(kept, scores >= threshold) and 0 < info["kept"] < len(synthetic)
    assert info["by"] == f"clip:{clip}" and len(kept_set) == info["kept"]
