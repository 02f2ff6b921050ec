"""subprof inside other people's training loops: `subprof.integrations.hf.SubprofCallback` measures a Hugging Face
`Trainer` run and writes it as a bench row beside subprof's estimate. Importing this package imports nothing heavy;
`subprof.integrations.hf` needs transformers (the `train` extra)."""
