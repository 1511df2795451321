"""Reserved token ids of every tokenizer and sequence model: PAD=0, BOS=1, EOS=2, UNK=3."""
PAD, BOS, EOS, UNK = 0, 1, 2, 3
SPECIALS = ("<pad>", "<s>", "</s>", "<unk>")
