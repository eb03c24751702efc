"""Network architectures as plain `nn.Module`s; `models.registry` maps `model.name` in params.yaml to a class.

Every class takes `input_shape`, `num_classes` and `vocab_size` (read from the prepare stage's metadata, never from
the user) followed by its own hyper-parameters as keyword arguments, which are exactly the fields of its section
under `model:` in params.yaml. The arguments tell the three kinds of input apart:

- tabular: `vocab_size` None, `input_shape` (features,); float rows. With `data.tabular.categorical_encoding:
  embedding` the metadata also gives `categorical_cardinalities` (the number of known categories of each
  categorical column): the last features of a row are then category indices, 0 for a missing or unknown category.
  Only the MLP reads those; `model.mlp.embedding_dim` caps the width of their embeddings.
- image: `vocab_size` None, `input_shape` (channels, height, width); float images.
- text: `vocab_size` the vocabulary's size, `input_shape` (max_len,); integer token ids (int32 or int64), padded
  at the end with `PAD_ID`. Fields such as `embedding_dim` apply to text (and the MLP's table embeddings) only.

Every network returns logits of shape (batch, num_classes). A network that cannot read a kind of input raises
ValueError when built, naming one that can. What each network accepts is in `models.specs`, which imports no torch
(nor does this package's `__init__`): the params schema reads it before any heavy import.
"""
