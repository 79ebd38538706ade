"""LJSpeech-layout data: the split, crops, FLAC roots, resampling, and errors that name the problem."""
from __future__ import annotations

from pathlib import Path

import pytest
import soundfile as sf
import torch

from wavflow.audio import load_audio
from wavflow.data import CropSampler, LJSpeech, read_metadata, validation_clips
from wavflow.errors import WavflowError
from wavflow.frontend import MelConfig, mel_spectrogram

from synth_helpers import clip


def make_root(tmp: Path, clips: dict[str, Path], lines: list[str] | None = None) -> Path:
    """A temporary LJSpeech-layout root whose wavs/ are symlinks to real clips (no audio is copied)."""
    (tmp / "wavs").mkdir(parents=True)
    for name, target in clips.items():
        (tmp / "wavs" / name).symlink_to(target)
    ids = lines if lines is not None else [f"{Path(n).stem}|text|text" for n in clips]
    (tmp / "metadata.csv").write_text("\n".join(ids) + "\n", encoding="utf-8")
    return tmp


def test_split_is_the_last_n_valid_lines_of_metadata(ljspeech_root):
    ids = [line.split("|")[0] for line in (ljspeech_root / "metadata.csv").read_text().splitlines()]
    train, valid = LJSpeech(ljspeech_root, "train"), LJSpeech(ljspeech_root, "valid")
    assert (len(train), len(valid)) == (len(ids) - 20, 20) == (13, 20)
    assert valid.ids == ids[-20:] and train.ids == ids[:-20]  # metadata order, nothing shuffled or lost
    assert valid.ids[-1] == "LJ002-0020"
    again = LJSpeech(ljspeech_root, "valid", n_valid=20)
    assert again.ids == valid.ids
    assert LJSpeech(ljspeech_root, "valid", n_valid=5).ids == ids[-5:]
    assert len(LJSpeech(ljspeech_root, "train", n_valid=0)) == len(ids)


def test_validation_items_are_whole_utterances(ljspeech_root):
    valid = LJSpeech(ljspeech_root, "valid", n_valid=2)
    for i in range(2):
        whole = load_audio(clip(valid.ids[i]), 22050)
        assert torch.equal(valid[i], whole)


def test_validation_clips_are_cut_to_whole_hops(ljspeech_root):
    """The clips the trainer validates on and wavflow.evaluate scores: the first N of the split, each cut to
    its first S seconds, then to a whole number of hops."""
    valid = LJSpeech(ljspeech_root, "valid", n_valid=20)
    whole = validation_clips(valid)
    assert [c.id for c in whole] == valid.ids and [c.path for c in whole] == valid.paths
    for c in whole:
        full = load_audio(clip(c.id), 22050)
        assert c.full_samples == full.shape[0] and c.audio.shape[0] == full.shape[0] // 256 * 256
        assert torch.equal(c.audio, full[: c.audio.shape[0]])
    cut = validation_clips(valid, max_clips=3, max_seconds=0.5)
    assert [c.id for c in cut] == valid.ids[:3]
    assert all(c.audio.shape[0] == int(0.5 * 22050) // 256 * 256 for c in cut)
    assert [c.audio.shape for c in validation_clips(valid, 2, 0)] == [c.audio.shape for c in whole[:2]]  # 0: whole
    assert validation_clips(valid, max_clips=0) == []


def test_crops_are_windows_of_the_clip(ljspeech_root):
    data = LJSpeech(ljspeech_root, "train", segment_length=16000)
    clip = data.load(1)
    seen = set()
    for epoch in range(4):
        crop = data[(1, 7, epoch)]
        assert crop.shape == (16000,) and crop.dtype == torch.float32
        starts = torch.nonzero((clip.unfold(0, 64, 1) == crop[:64]).all(1)).flatten().tolist()
        assert any(torch.equal(clip[s:s + 16000], crop) for s in starts)
        assert torch.equal(crop, data[(1, 7, epoch)])  # a function of (index, seed, epoch) alone
        seen.add(starts[0])
    assert len(seen) > 1  # other epochs crop elsewhere
    assert data[3].shape == (16000,)  # plain int index: offset from torch's RNG


def test_short_clip_is_zero_padded(ljspeech_root, short_clip, tmp_path):
    root = make_root(tmp_path / "r", {"LJ002-0020.wav": short_clip,
                                      "LJ001-0002.wav": ljspeech_root / "wavs" / "LJ001-0002.wav"})
    data = LJSpeech(root, "train", n_valid=1, segment_length=40000)
    clip = load_audio(short_clip, 22050)
    crop = data[(0, 0, 0)]
    assert clip.shape[0] == 33949 and crop.shape == (40000,)
    assert torch.equal(crop[:33949], clip) and not crop[33949:].any()


def test_return_mel_matches_the_mel_of_the_crop(ljspeech_root):
    data = LJSpeech(ljspeech_root, "train", segment_length=8192, return_mel=True)
    audio, mel = data[(0, 1, 2)]
    assert mel.shape == (80, 8192 // 256 + 1)
    assert torch.equal(mel, mel_spectrogram(audio.unsqueeze(0))[0])


def as_wav(flac: Path, wav: Path) -> Path:
    """The same clip as 16-bit PCM WAV, written with soundfile from the FLAC's integer samples."""
    pcm, sr = sf.read(str(flac), dtype="int16")
    sf.write(str(wav), pcm, sr, subtype="PCM_16")
    return wav


def test_flac_root_decodes_like_the_wavs(ljspeech_root, tmp_path):
    flac = LJSpeech(ljspeech_root, "valid", n_valid=3)
    assert [p.suffix for p in flac.paths] == [".flac", ".flac", ".wav"]
    assert flac.ids == ["LJ001-0031", "LJ001-0032", "LJ002-0020"]
    (tmp_path / "w").mkdir()
    for i in range(2):
        wav = as_wav(flac.paths[i], tmp_path / "w" / f"{flac.ids[i]}.wav")
        assert sf.info(str(flac.paths[i])).format == "FLAC" and sf.info(str(wav)).format == "WAV"
        assert torch.equal(flac.load(i), load_audio(wav, 22050))  # lossless


def test_mixed_wav_and_flac_root(ljspeech_root, tmp_path):
    flac = ljspeech_root / "wavs"
    wav = as_wav(flac / "LJ001-0002.flac", tmp_path / "LJ001-0002.wav")
    root = make_root(tmp_path / "r", {"LJ001-0001.flac": flac / "LJ001-0001.flac",
                                      "LJ001-0002.wav": wav,
                                      "LJ001-0003.flac": flac / "LJ001-0003.flac"})
    train = LJSpeech(root, "train", n_valid=1, segment_length=4096)
    assert [p.name for p in train.paths] == ["LJ001-0001.flac", "LJ001-0002.wav"]
    assert train[(0, 0, 0)].shape == (4096,)
    assert torch.equal(train.load(1), load_audio(flac / "LJ001-0002.flac", 22050))


def test_audio_is_resampled_to_the_mel_rate(ljspeech_root, short_clip):
    data = LJSpeech(ljspeech_root, "valid", n_valid=1, mel_config=MelConfig(sample_rate=16000))
    n = sf.info(str(clip(data.ids[0]))).frames
    assert abs(data[0].shape[0] - n * 16000 / 22050) <= 1


def test_sampler_shards_and_resumes_epochs(ljspeech_root):
    data = LJSpeech(ljspeech_root, "train", n_valid=0)
    assert len(data) == 33
    ranks = [CropSampler(data, num_replicas=2, rank=r, seed=5) for r in (0, 1)]
    for s in ranks:
        s.set_epoch(3)
    shards = [[i for i, _, _ in s] for s in ranks]
    assert all(len(x) == 17 for x in shards)  # 33 clips over 2 processes, padded to 34
    assert set(shards[0]) | set(shards[1]) == set(range(33))
    assert len(set(shards[0]) & set(shards[1])) <= 1
    single = CropSampler(data, seed=5)
    single.set_epoch(3)
    full = list(single)
    single.set_epoch(4)
    assert [i for i, _, _ in single] != [i for i, _, _ in full]  # reshuffled each epoch
    single.set_state(3, 10)
    assert list(single) == full[10:] and len(single) == 33 - 10
    assert all(seed == 5 and epoch == 3 for _, seed, epoch in full)


def test_read_metadata_accepts_two_field_lines_and_blank_lines(tmp_path, short_clip):
    root = make_root(tmp_path / "r", {"A.wav": short_clip, "B.wav": short_clip}, ["A|hello", "", "B|x|y"])
    assert read_metadata(root) == [("A", "hello"), ("B", "y")]


@pytest.mark.parametrize("case, message", [
    ("no_root", "dataset root does not exist"),
    ("no_metadata", "metadata.csv: missing"),
    ("malformed", "metadata.csv:2: malformed line"),
    ("duplicate", "metadata.csv:2: clip ID A appears twice"),
    ("missing_clip", "wavs/GONE.wav: missing"),
    ("empty", "lists no clips"),
    ("n_valid", "n_valid=2 must be"),
])
def test_bad_roots_are_refused_by_name(tmp_path, short_clip, case, message):
    root = tmp_path / "r"
    if case != "no_root":
        lines = {"no_metadata": None, "malformed": ["A|a|a", "no separator here"], "duplicate": ["A|a", "A|b"],
                 "missing_clip": ["A|a", "GONE|b"], "empty": [""], "n_valid": ["A|a", "B|b"]}[case]
        make_root(root, {"A.wav": short_clip, "B.wav": short_clip}, lines or [])
        if lines is None:
            (root / "metadata.csv").unlink()
    with pytest.raises(WavflowError, match=message.replace("(", r"\(")) as e:
        LJSpeech(root, "train", n_valid=2 if case == "n_valid" else 0)
    assert "\n" not in str(e.value)


def test_segment_too_short_for_a_mel(ljspeech_root):
    with pytest.raises(WavflowError, match="segment_length=256 is too short"):
        LJSpeech(ljspeech_root, "train", segment_length=256)
