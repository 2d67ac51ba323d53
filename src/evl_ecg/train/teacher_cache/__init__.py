r"""The teacher-output cache: the frozen teacher's outputs computed once per record and reused by every KD run.

The teacher is frozen and the training images are fixed, so what it gives the losses for a record is the same in
every KD run (the offline teacher outputs of TRL, DSKD and DistillKit). ``evl-ecg distill --teacher-cache DIR``
builds the cache when ``DIR`` is empty or absent, reuses it when its key matches the run, and refuses it otherwise;
``evl-ecg train cache`` only builds it. A run with a cache loads no teacher weights and does not encode the teacher's
side of the records (its image processing is most of the data loading).

**What is stored** is exactly what the objective's losses read of the teacher's
:class:`~evl_ecg.outputs.SideOutputs`, as each registered loss declares them for its options
(:meth:`~evl_ecg.distill.registry.DistillLoss.teacher_reads`), per record and over its valid positions only, in
safetensors shards:

* always: ``input_ids``, ``labels``, ``token_offsets`` (``L``, ``L``, ``L x 2``); the masks and image positions
  (``attention_mask``, ``text_mask``, ``visual_mask``, ``image_positions``) are derived from them at load time exactly
  as :meth:`~evl_ecg.models.base.Adapter.forward` derives them;
* ``hidden``: ``L x D_t`` last hidden states (MHCA, DSKD, EM-KD, RKD);
* ``logits``: ``R x V_t``, only the ``R`` rows whose next token is supervised (the rows every logit loss reads:
  :func:`~evl_ecg.distill.registry.next_token_targets`); the other rows are rebuilt as zeros (ULD, MultiLevelOT,
  Vanilla KL, DSKD, TinyBERT's prediction layer, EM-KD's RLD);
* ``visual``: ``N_t x D_t'`` visual tokens (OT);
* ``all_hidden`` / ``attentions``: every layer's states and attention maps (TinyBERT);
* once per cache: ``embedding_weight`` / ``lm_head_weight`` (DSKD, EM-KD), and the teacher's vocabulary strings and
  sizes (:meth:`TeacherCache.loss_context`), so that no tokenizer is needed either.

At load time (:meth:`TeacherCache.collate`, in the data loader) the records of a batch are padded exactly as the
teacher's own collate pads them (right padding; ``pad_token_id``, ``-100``, ``-1``, zeros), and
:meth:`TeacherCache.side_outputs` turns that into the ``SideOutputs`` the live teacher would give: identical on every
valid position a loss reads (tested against the live teacher for every preset). A field the objective does not read
is absent: ``None`` where optional, a NaN tensor of the right shape (a stride-0 view, no memory) for ``hidden`` and
``logits``, so that a loss reading what was not stored fails loudly instead of training on zeros.

**The key** (``cache.json``): the teacher's :func:`~evl_ecg.models.fingerprint.model_fingerprint` digest, its
template (:func:`~evl_ecg.models.fingerprint.template_signature`) and image-processor settings, the data (sha256 of
the training file and of ``manifest.json`` beside it), ``max_length``, and the fields stored. A cache serves a run when
all agree, its fields include the run's, and it holds the run's records (the first ``n`` of the same file, ids
checked per record and per batch); otherwise the run is refused with an error naming what differs.

Before anything is written the build prints its size (record 0's tensors times the record count, plus the shared
tensors) and refuses when the disk has less free space. Shards are written atomically; a killed build run again with
the same key continues from its last complete shard; runs started at once on one directory build it once (a lock
beside it, :func:`build_lock`), the others wait and reuse it.
"""

from evl_ecg.files import human_bytes
from evl_ecg.train.teacher_cache.build import build_lock, build_teacher_cache, open_or_build
from evl_ecg.train.teacher_cache.key import (
    BASE_FIELDS,
    BUILD_FILE,
    CACHE_FILE,
    CONSTANT_FIELDS,
    CONSTANTS_FILE,
    FIELDS,
    FORMAT,
    PER_RECORD_FIELDS,
    SHARD_PATTERN,
    VOCAB_FILE,
    TeacherCacheError,
    cache_key,
    data_signature,
    key_digest,
    key_mismatches,
    method_fields,
    spec_fields,
)
from evl_ecg.train.teacher_cache.store import TeacherCache, record_tensors, response_rows

__all__ = [
    "BASE_FIELDS",
    "BUILD_FILE",
    "CACHE_FILE",
    "CONSTANTS_FILE",
    "CONSTANT_FIELDS",
    "FIELDS",
    "FORMAT",
    "PER_RECORD_FIELDS",
    "SHARD_PATTERN",
    "VOCAB_FILE",
    "TeacherCache",
    "TeacherCacheError",
    "build_lock",
    "build_teacher_cache",
    "cache_key",
    "data_signature",
    "human_bytes",
    "key_digest",
    "key_mismatches",
    "method_fields",
    "open_or_build",
    "record_tensors",
    "response_rows",
    "spec_fields",
]
