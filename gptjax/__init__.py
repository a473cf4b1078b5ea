"""gptjax: decoder-only language models in JAX/Flax NNX.

Tensor names end in their shape, one letter per axis joined by x (`logits_BxTxV`); each letter means one
thing across the package (tests/test_shape_letters.py keeps to this list):
  B  rows of a batch                       T  positions of a sequence (queries)
  S  key positions / KV-cache slots        L  a padded row's length (left- or right-padded tokens)
  E  generated (response) tokens           C  positions of one time chunk
  R  rows of a flattened batch (B*G rollouts, B*T positions, B*M responses)
  U  iterations of a loop (scan steps: time chunks, updates, eval batches)
  D  model width    F  MLP hidden width    H  head dim    V  vocabulary
  N  query heads    K  key/value heads     Q  query heads per key/value head (N // K)
  W  beams          G  completions per prompt (an RL group)
  M  members of a set (a group's responses, a sweep group's members, documents)
  P  preference pairs                      Z  states of an automaton or a Markov chain
  I  a dense layer's input features         O  its output features (a kernel is IxO)
  1  a size-1 axis                         2  a pair (winner, loser)
"""
