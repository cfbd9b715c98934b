"""The sections of the config tree: one dataclass each (data, privacy, preprocess, encoders, fusion, train, align,
rl), their fields' defaults, and what each field means (the comment beside it)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

IMAGE_FITS = ("squash", "pad")
BAD_ROW_POLICIES = ("error", "skip")
PRESETS = (None, "scratch", "pretrained")


def _choices(*values: Any) -> dict[str, Any]:
    return {"choices": values}


def _is_run_field(cls: type, name: str) -> bool:
    return bool({f.name: f for f in fields(cls)}[name].metadata.get("run"))


@dataclass
class DataConfig:
    label: str | None = None  # the column to predict
    # binary | multiclass | regression | multilabel | text (generated free text); None: inferred from the label
    problem_type: str | None = None
    # column -> text | image | audio | video | numeric | categorical
    modalities: dict[str, str] = field(default_factory=dict)
    ignore: list[str] = field(default_factory=list)  # columns left out
    # A column naming groups of rows (e.g. a question type): evaluate/compare/report score each of its values
    # beside the overall metrics. Never a model input.
    group_by: str | None = None
    # A column naming who or what each row comes from (speaker, patient, writer, customer): validation rows are
    # then whole groups, so early stopping and model choice reward generalising to groups never seen (also the
    # held-out groups of `compare --cv groups` and `tune`). Never a model input.
    split_by: str | None = None
    valid_fraction: float = 0.1  # validation split of the training rows when no validation table is given
    on_bad_rows: str = field(default="error", metadata=_choices(*BAD_ROW_POLICIES))
    # Multilabel: what an empty label cell means. missing: an unknown label, a bad row (on_bad_rows), the default,
    # as before; none: the row has no label (the empty set), so a prediction may be empty too; any other string
    # (e.g. "-"): a cell holding exactly that token is the empty set and an empty cell stays missing.
    empty_label: str = "missing"
    # Tables larger than memory: read in chunks, media decoded on the fly in loader worker processes. auto:
    # stream a file whose decoded rows would take more than a quarter of the available memory.
    streaming: str = field(default="auto", metadata=_choices("auto", "on", "off"))
    chunk_rows: int = 4096  # rows per chunk when streaming

    def left_out(self) -> list[str]:
        """The columns that are not inputs: `ignore`, plus the group and split columns."""
        extra = [c for c in dict.fromkeys((self.group_by, self.split_by)) if c and c not in self.ignore]
        return list(self.ignore) + extra


@dataclass
class PreprocessConfig:
    image_size: int = 64
    image_fit: str = field(default="squash", metadata=_choices(*IMAGE_FITS))  # pad: keep the aspect ratio
    sample_rate: int = 16000
    max_audio_seconds: float = 10.0
    # Clips are cut or padded to this percentile of the training clips' durations (at most max_audio_seconds).
    # Unset: 95, or 100 when the label is generated text (a transcript whose clip is cut loses its last words).
    audio_percentile: float | None = None
    n_mels: int = 40
    n_mfcc: int = 20
    # The speech-embedding encoder reads clips of at least this many seconds (whole 80 ms steps past its 0.782 s
    # window; longer when the training clips' 95th percentile is, up to max_audio_seconds), a shorter clip padded:
    # center (zeros on both sides), repeat (the clip again) or after (zeros after it). benchmarks/speech_padding.py.
    speech_seconds: float = field(default=1.5, metadata={"positive": True})
    speech_pad: str = field(default="center", metadata=_choices("center", "repeat", "after"))
    # Scratch audio features: utterance normalizes each clip on its own before the global standardization (each
    # row's mean over the clip removed, one spread per clip divided out: less of the voice and the channel); global:
    # the global standardization alone.
    audio_norm: str = field(default="global", metadata=_choices("global", "utterance"))
    max_text_tokens: int = 128
    max_vocab: int = 30000
    min_token_count: int = 1
    max_categories: int = 1000
    # Video columns (polymodal/data/video.py): frames sampled per clip and resized like images (image_size,
    # image_fit); the sound track resampled to sample_rate and cut or padded to the clip's duration.
    video_frames: int = 8  # frames kept per clip, at the centres of equal parts of the clip
    video_fps: float | None = None  # instead, a frame every 1 / video_fps s from the start (short clips repeat)
    video_max_seconds: float = 120.0  # a longer video is a bad row (named), not decoded
    video_max_pixels: int = 2_000_000_000  # frames x width x height at the file's size: above, a bad row
    video_jitter: float = 0.2  # training: chance that a kept frame is swapped for its neighbour (order kept)
    # Filled by `fit` from the encoders section, not a user setting: input -> {"ref": EncoderRef as dict,
    # "mode": "frozen" | "finetune", "layers": N or None, "lora": bool}.
    pretrained: dict[str, dict[str, Any]] = field(default_factory=dict, metadata={"internal": True})
    # Filled by `fit` from encoders.readout, not a user setting: input -> the fitted preparation its text model's
    # folder holds (sound length, vocabulary, statistics), which this fit takes instead of fitting its own.
    fixed: dict[str, dict[str, Any]] = field(default_factory=dict, metadata={"internal": True})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# The preprocess fields `fit` fills (not settings): left out wherever the section is read from a user or a folder.
PREPROCESS_INTERNAL = tuple(f.name for f in fields(PreprocessConfig) if f.metadata.get("internal"))


@dataclass
class ModalityEncoderConfig:
    """The encoder of one modality's columns."""

    name: str | None = None  # pretrained encoder (registry name, HF id or folder); None or "scratch": scratch
    embed_dim: int | None = None  # None: encoders.embed_dim


@dataclass
class TabularEncoderConfig:
    embed_dim: int | None = None  # None: encoders.embed_dim


@dataclass
class VideoEncoderConfig:
    """The frames of video columns: an image encoder on each frame (or a video model on the clip), then a temporal
    model over them."""

    embed_dim: int | None = None  # None: encoders.embed_dim
    # The frames' encoder: scratch (a small CNN per frame); a pretrained image encoder on each frame (a registry
    # name like efficientnet-lite0, an HF vision model id or folder), frozen (each frame's embedding in the feature
    # cache) or fine-tuned as encoders.freeze says; or a VideoMAE / TimeSformer model (id or folder) on the whole
    # clip, whose num_frames and image_size must equal preprocess.video_frames and image_size. encoders.columns
    # {COL: name} sets it per video column.
    frames: str = "scratch"
    # mean: frames averaged (order-blind) | gru: a bidirectional GRU | transformer: self-attention with positions
    temporal: str = field(default="gru", metadata=_choices("mean", "gru", "transformer"))
    layers: int = 1  # GRU or transformer layers
    heads: int = 4  # transformer attention heads


@dataclass
class EncodersConfig:
    embed_dim: int = 128  # embedding size of every encoder, unless its modality sets its own
    preset: str | None = field(default=None, metadata=_choices(*PRESETS))  # pretrained: the offline defaults
    freeze: bool = True  # pretrained encoders: frozen (features cached) or fine-tuned
    finetune_layers: int | None = None  # fine-tuning: only the top N layers
    lora: bool = False  # fine-tuning: LoRA adapters instead of the encoder's weights
    cache_dir: str | None = None  # feature cache of frozen encoders (default ~/.cache/polymodal)
    # What runs frozen encoders in the feature pass: torch (fp32), or onnx-int8 (the encoder exported once to an
    # int8 ONNX graph and run by ONNX Runtime: faster on a CPU; its embeddings have their own cache namespace).
    frozen_runtime: str = field(default="torch", metadata=_choices("torch", "onnx-int8"))
    # Cache a frozen encoder's token outputs (word, patch or frame tokens, fp16) instead of its pooled embedding,
    # for the token-level fusions; None: when the fusion or a text decoder reads tokens (decoder.memory tokens, CTC;
    # a pooled fusion then pools them itself).
    frozen_tokens: bool | None = None
    # column (or a video's sound track, "COL:sound") -> pretrained encoder, over the modality's
    columns: dict[str, str] = field(default_factory=dict)
    # Input name -> a fitted model folder: the input's encoder starts from that folder's weights for the same input
    # (e.g. {"clip:frames": runs/shown}, a branch pre-trained on its own target); same sizes and preprocessing.
    init_from: dict[str, str] = field(default_factory=dict)
    init_freeze: bool = False  # encoders started from init_from keep their weights (only the rest trains)
    # Input name -> a fitted text model of that input alone (e.g. {"clip:sound": runs/spoken}): the input is read
    # through it, frozen, as the word distributions it decodes step by step (polymodal/model/readout.py)
    readout: dict[str, str] = field(default_factory=dict)
    readout_steps: int | None = None  # decoded steps per readout input; None: its text model's decoder.max_length
    text: ModalityEncoderConfig = field(default_factory=ModalityEncoderConfig)
    image: ModalityEncoderConfig = field(default_factory=ModalityEncoderConfig)
    audio: ModalityEncoderConfig = field(default_factory=ModalityEncoderConfig)
    video: VideoEncoderConfig = field(default_factory=VideoEncoderConfig)
    numeric: TabularEncoderConfig = field(default_factory=TabularEncoderConfig)
    categorical: TabularEncoderConfig = field(default_factory=TabularEncoderConfig)

    def dim(self, modality: str) -> int:
        """The embedding size of a modality's encoders."""
        own = getattr(self, modality).embed_dim
        return self.embed_dim if own is None else own


@dataclass
class FusionConfig:
    # early | late | attention | gmu | tensor | low_rank | cross_attention; token-level: relation | film |
    # token_transformer
    name: str = "attention"
    hidden: int = 128  # width of the fusion and the task head
    dropout: float = 0.1
    options: dict[str, Any] = field(default_factory=dict)  # the fusion's own settings, e.g. {heads: 8, layers: 3}


@dataclass
class DecoderConfig:
    """Text outputs (`data.problem_type: text`): the target vocabulary, the decoder, how it generates and scores."""

    # transformer (cross-attention to the input tokens) | gru (GRU with attention) | ctc (per-token CTC head, for
    # monotonic audio -> text) | hf (the pretrained Hugging Face decoder of `pretrained`)
    name: str = field(default="transformer", metadata=_choices("transformer", "gru", "ctc", "hf"))
    # A Hugging Face causal LM (GPT-2 family, given cross-attention) or seq2seq model (T5, BART: its decoder) by hub
    # id or local folder: the decoder reading the inputs, and its tokenizer in place of the word vocabulary
    pretrained: str | None = None
    # The pretrained decoder's weights: frozen | finetune | lora (adapters on its attention projections); what is
    # new (the projection to its width, GPT-2's cross-attention) always learns
    train: str = field(default="lora", metadata=_choices("frozen", "finetune", "lora"))
    lora_rank: int = 8  # rank of the LoRA adapters (train: lora)
    tokens: str = field(default="word", metadata=_choices("word", "char"))  # target vocabulary of words or characters
    max_vocab: int = 10000  # the most frequent target tokens of the training rows; the rest are unknown
    min_count: int = 1  # a target token seen fewer times in training is unknown
    max_length: int = 32  # target tokens kept (longer targets are truncated, with a warning) and generated at most
    lowercase: bool = True  # targets lower-cased before the vocabulary is built (and so the generated text)
    # What the decoder reads: tokens (every encoder's token outputs: words, image regions, audio frames; one token
    # for numbers and categories) or pooled (one token per input); the fused vector is always one more token.
    memory: str = field(default="tokens", metadata=_choices("tokens", "pooled"))
    dim: int = 128  # decoder width
    layers: int = 2  # transformer layers (gru: GRU layers)
    heads: int = 4  # attention heads
    dropout: float = 0.1
    label_smoothing: float = 0.1  # of the teacher-forced cross-entropy
    # CTC: the input whose tokens are the time steps (default: the audio input, else the longest token sequence)
    ctc_input: str | None = None
    beam_size: int = 1  # 1: greedy decoding
    length_penalty: float = 1.0  # beam scores are sum log p / length ** length_penalty
    no_repeat_ngram: int = 0  # > 0: no n-gram of this size is generated twice
    n_best: int = 1  # hypotheses kept per row (at most beam_size), with their scores
    # The validation metric for early stopping and tune: wer | cer | bleu | chrf | cider | rouge_l | exact_match;
    # None: wer when an input is audio (speech-like), else cider
    metric: str | None = None
    metric_lowercase: bool = True  # metrics compare lower-cased text
    metric_punctuation: bool = False  # False: punctuation is removed before scoring


@dataclass
class TrainConfig:
    max_epochs: int = 30
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-2
    patience: int = 6
    # A budget for training, in seconds (Lightning's max_time), checked after every batch: training then stops,
    # validates and keeps the best epoch's weights, early stopping still applying within it. None: no limit.
    time_limit: float | None = field(default=None, metadata={"positive": True})
    seed: int = 0
    accelerator: str = "auto"
    devices: int | str = 1  # processes (GPUs) per machine
    strategy: str = "auto"  # ddp: one process per device, gradients all-reduced (Lightning DDP)
    num_nodes: int = 1  # machines (torchrun and SLURM runs fill this in from their environment)
    num_workers: int | None = None  # loader worker processes; None: 0 in memory, up to 4 when streaming
    precision: str = "32-true"
    modality_dropout: float = 0.0
    augment: bool = True  # light augmentation of training batches (images: shifts, brightness; audio: audio_warp)
    # With augment, each training image (a video: each clip, all its frames alike) also rotated by up to
    # +-image_rotate degrees and zoomed by 1 +- image_scale; 0: off. For handwriting, signs, objects seen at an angle.
    image_rotate: float = field(default=0.0, metadata={"range": (0.0, 180.0)})
    image_scale: float = field(default=0.0, metadata={"range": (0.0, 0.9)})
    # Training batches of whole groups of rows that share a media file (a picture asked several questions), so each
    # file is encoded once per batch for all its rows: on | off | auto (on when a file repeats on 2+ rows on average).
    # A file's rows then see the same augmented copy. Not in streamed training.
    group_batches: str = field(default="auto", metadata=_choices("auto", "on", "off"))
    # Random frequency warp of scratch audio features in training (VTLP-style): each clip's spectrum f -> s f^b,
    # log s and log b uniform in +-audio_warp; 0: off. Less dependence on the voice (another speaker, McAdams).
    audio_warp: float = 0.0
    # Speed perturbation of scratch audio in training: each clip played 1 +- audio_speed times as fast (time and
    # pitch together, on its features); 0: off.
    audio_speed: float = 0.0
    # SpecAugment of scratch audio in training: masks per clip over up to audio_freq_width mel bands (filled with the
    # clip's mean) and over up to audio_time_width frames of 10 ms (filled with the mean); 0 masks: off.
    audio_freq_masks: int = 0
    audio_freq_width: int = 8
    audio_time_masks: int = 0
    audio_time_width: int = 10
    progress: bool = True
    encoder_lr: float | None = None  # learning rate of fine-tuned pretrained encoders (default: lr / 10)
    # After validation has chosen the epoch, train again from the same initial weights on the training and the
    # validation rows together for that many epochs, and keep that model: more data (with split_by, one more group),
    # about twice the time. Its validation scores are the first run's (the second one has seen those rows).
    refit: bool = False
    # Where this run keeps the checkpoint written after each epoch, so a killed run resumes (the CLI: a hidden
    # sibling of the output folder), and whether to discard one found there. The run's, not the model's: never
    # saved with the model.
    checkpoint_dir: str | None = field(default=None, metadata={"run": True})
    restart: bool = field(default=False, metadata={"run": True})

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if not _is_run_field(TrainConfig, k)}


@dataclass
class PrivacyConfig:
    """Personal data removed from every table before anything is fitted, logged or saved (polymodal.privacy)."""

    anonymize: bool = False
    operator: str = field(default="placeholder", metadata=_choices("placeholder", "mask", "hash"))  # hash: salted
    ner_model: str | None = None  # token-classification model (HF id or folder) for names, places, organizations
    faces: str = field(default="blur", metadata=_choices("blur", "box", "keep"))
    voice: str = field(default="mcadams", metadata=_choices("mcadams", "keep"))
    alpha: float = 0.8  # McAdams coefficient
    alpha_range: list[float] | None = None  # [low, high]: a random alpha per recording (seeded)
    seed: int = 0
    output_dir: str | None = None  # where the anonymized copies go (None: a temporary folder, removed after fit)


@dataclass
class AlignConfig:
    """Cross-modal alignment (`polymodal align`, `MultimodalRetriever`): which columns share one embedding space.
    An aligned model reads data (label, modalities, valid_fraction, on_bad_rows), preprocess, encoders and train
    too; fusion is not used (each column is projected on its own)."""

    target: str | None = None  # the anchor column every query column is aligned to
    query: list[str] = field(default_factory=list)  # the columns aligned to the target
    dim: int = 64  # size of the shared space
    hidden: int = 256  # width of each column's projection head
    dropout: float = 0.1
    temperature: float = 0.07  # initial softmax temperature (learned)


@dataclass
class RLConfig:
    """Reinforcement learning (`polymodal rl train`, `polymodal.rl.AgentConfig`): an SB3 agent whose policy reads
    the env's observations through polymodal encoders and a fusion. Its own section: the policy network's fusion
    and sizes are set here, not in fusion/encoders (those describe a table model)."""

    env_id: str | None = None  # a gymnasium env id, e.g. BabyAI-GoToLocalS6N2-v0
    algo: str = field(default="ppo", metadata=_choices("dqn", "ppo", "qrdqn"))  # qrdqn: sb3-contrib's QR-DQN
    steps: int = 50_000  # environment steps to train for
    fusion: str = "early"  # any pooled or token-level fusion name
    embed_dim: int = 64  # embedding size of every observation encoder
    hidden: int = 128  # width of the fusion
    seed: int = 0
    n_envs: int | None = None  # parallel envs; None: 1 for DQN, 8 for PPO
    extractor: bool = True  # False: SB3's default CombinedExtractor (the benchmark's baseline)
    text: str = field(default="tokens", metadata=_choices("tokens", "bow"))  # Text obs -> token ids | word counts
    hide: list[str] = field(default_factory=list)  # observation keys the agent does not see
    modalities: dict[str, str] = field(default_factory=dict)  # observation key -> modality, over the inferred one
    # per key, e.g. {"image": {"widths": [8]}}; MiniGrid/BabyAI views: {"image": {"codes": 16, "grid": 7}};
    # {"arch": "cnn" | "rnn" | "mlp"}: the library's encoder instead of the light one (polymodal/rl/encoders.py)
    encoder_kwargs: dict[str, dict[str, Any]] = field(default_factory=dict)
    env_kwargs: dict[str, Any] = field(default_factory=dict)  # gymnasium.make keywords
    hyperparameters: dict[str, Any] = field(default_factory=dict)  # SB3's, over polymodal's defaults per algorithm
    net_arch: list[int] | None = None
    model: str | None = None  # transfer: a polymodal model folder whose encoders the policy starts from
    transfer: dict[str, str] = field(default_factory=dict)  # observation key -> the model's input name
    freeze: bool = True  # transferred encoders frozen, or trained on
    threads: int = 1  # torch CPU threads: RL runs many tiny batches, where more threads only add contention
    eval_every: int = 5_000  # steps between evaluations (the learning curve)
    eval_episodes: int = 50
    # at the end, the policy takes the weights of its best periodic evaluation (success rate, then mean return; the
    # later one on a tie): training's last weights can sit in a dip. Those evaluations use their own episode seeds,
    # not `rl evaluate`'s, so the final score stays unbiased by the choice.
    keep_best: bool = True
    vocab_resets: int = 200  # env resets sampled to build the vocabulary of Text observations
    # DQN / QR-DQN with the polymodal extractor (polymodal.rl.dqn); None: the algorithm's default
    double_q: bool = True  # DQN: Double-DQN target (the online net picks the next action, the target net values it)
    # DQN: when an action leaves the observation unchanged, bootstrap from that action's own value (no-ops learn
    # their worth instead of sitting within the TD error of the best action); None: on for DQN
    self_loop_target: bool | None = None
    encoder_lr_scale: float | None = None  # encoders' learning rate / the fusion's and Q head's; None: 0.1 (DQN), 1
    fused_norm: bool | None = None  # LayerNorm after the fusion; None: on for DQN/QR-DQN, off for PPO
    # the library's scratch CNNs' norm (arch "cnn"; the light GridEncoder has none): batch | group | none; None:
    # group (DQN/QR-DQN), batch
    cnn_norm: str | None = None
    diagnostics_every: int = 1_000  # DQN: steps between diagnostics (Q values, TD error, gradients, replay buffer)
