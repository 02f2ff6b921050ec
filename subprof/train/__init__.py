"""Real training: the default corpus, short bursts that compare methods on equal terms, and `plan --burst`."""
