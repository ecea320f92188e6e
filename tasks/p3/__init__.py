r"""P3 (`bigscience/P3`): T0's prompted datasets as SeqIO tasks and mixtures.

P3 is promptsource's templates applied to the datasets T0 was trained and
evaluated on, stored as TFRecords of T5 token ids: one folder per (dataset,
template) and, for templates with answer choices, a `_score_eval` folder with
one record per (example, answer choice):

    $SPT_P3_DIR/[data/]<dataset>_<subset>_<template>[_score_eval]/
        info.<split>.json     {"features": {name: {"dtype", "shape"}},
                               "num_shards": N}
        stats.<split>.json    {"examples": ..., ...}
        <split>.tfrecord-0000i-of-0000N

Folder names follow T0's task names: `<dataset>_<subset>_<template>` with
every run of characters other than letters, digits, `.` and `_` replaced by
`_`; ANLI's rounds are suffixes (`anli_<template>_r1`).

Setting `$SPT_P3_DIR` (before `import tasks`) registers, per folder,

* `spt_p3__<dataset>__<template>` (training folders) or
  `spt_p3__<dataset>__<template>__score` (`_score_eval` folders), where
  `<dataset>` is T0's `<dataset>_<subset>` (`super_glue_cb`, `anli_r1`) and
  `<template>` the folder's template part (runs of `_` collapsed);
* the mixtures `spt_p3_t0_train` (T0), `spt_p3_t0plus_train` (T0+: adds the
  GPT-3 evaluation datasets), `spt_p3_t0plusplus_train` (T0++: adds
  SuperGLUE), over the training folders P3 holds for their datasets, and
  `spt_p3_t0_heldout`: the `_score_eval` folders of T0's 11 held-out dataset
  splits (ANLI R1/R2/R3, CB, RTE, WSC, Winogrande, COPA, HellaSwag,
  StoryCloze, WiC), split `validation`.

Features, read as stored: `inputs` int32 [T] (no EOS, as T0 trained),
`targets` int32 [T'] (ending in EOS), `inputs_pretokenized`,
`targets_pretokenized`, `answer_choices` string [C], and in `_score_eval`
folders `idx` int32 [2] (example, choice), `is_correct` bool, `weight`
float32. Score tasks use `spt_jax.eval_protocol.rank_classification_accuracy`, so
`spt_jax.eval_protocol.aggregate_over_templates` gives the mean and median accuracy
over each dataset's templates, as T0 reports them.

The discrete prompt (SPT's retrieval query). P3 stores only the rendered
input. With `$SPT_PROMPTSOURCE_DIR` pointing at a promptsource checkout, each
template's instruction is read from promptsource's
`promptsource/templates/<dataset>[/<subset>]/templates.yaml` (parsed here with
PyYAML; promptsource itself does not install on Python 3.11) and derived as
for our own templates, read as promptsource writes them
(`tasks.prompt_templates`: promptsource's Jinja helpers `zip`, `choice`,
`most_frequent`, `highlight`; the whole template rendered with every field
blank, then split at `|||`); the tasks then output `prompt`, int32 token ids
ending in EOS, like `tasks.prompted`. Where that fails (the template raises,
or renders empty although its input has text outside Jinja blocks), the
instruction is that literal text, and a warning names the file and the
template. A folder whose template the checkout lacks uses its template name
as the instruction (a warning lists them). A template whose instruction is
empty (its input is nothing but fields: `{{question}} ||| ...`) would send an
empty query: its task's `prompt` is instead the example's own input
(`add_prompt_from_inputs`), cut to the prompt length, so SPT pools its query
over the start of the input; a warning lists those tasks, and
`Registered.instruction_sources` says, per task, which of these applies.
Without a checkout the tasks have no `prompt` feature, and the model pools
its query over the encoder input (`SptConfig.prompt_length = 0`,
`prompt_span = 'all_tokens'`). Registration logs which one is in use.

Which templates count, following T0's code (bigscience-workshop/t-zero,
`t0/seqio_tasks/tasks.py`): training mixtures take every template of their
datasets (minus `gigaword_summarize_`, which T0 excluded); the held-out
mixture takes the templates whose promptsource metadata says
`original_task: true`. Without a promptsource checkout that metadata is
unknown and the held-out mixture takes every `_score_eval` folder (logged).

Mixing rates, as T0's code computes them: each template task of a dataset of
N training examples and T templates has rate N if N <= 500,000, else
500,000 // T (`tasks.prompted.mixing_rate`). N is read from the data when a
mixture is first used: the largest `examples` count of the dataset's training
folders' `stats.train.json` (templates that cannot render an example drop it,
so the largest count is the dataset's size); T is the number of the dataset's
templates in promptsource when a checkout is given (as T0 counted them), else
the number of its training folders in P3.

A corrupt shard (a damaged or truncated record, or records that do not match
`info.<split>.json`) fails the pipeline with an error naming the folder and
the shard, instead of tf.data's bare "corrupted record at N".

The package, one module a job: `datasets` (T0's datasets, names and
settings), `promptsource` (templates.yaml read for the instructions),
`folders` (P3's folders found and their names parsed), `source` (`P3Source`,
a folder's TFRecords), `preprocessing` (the discrete prompt and output
features) and `mixtures` (`register`, `register_from_environment`: the tasks
and T0's mixtures).
"""

from tasks.p3 import datasets
from tasks.p3 import promptsource
from tasks.p3 import folders
from tasks.p3 import source
from tasks.p3 import preprocessing
from tasks.p3 import mixtures
