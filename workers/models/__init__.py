"""Neural models: the log-mel front end, the CNN14-style audio encoder, the tag-guided
captioner and its checkpoint format. Plain torch; no Ray."""
