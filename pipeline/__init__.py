"""Stage entry points (prepare, train, evaluate) and the machinery they share."""
