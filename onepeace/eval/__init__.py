"""Zero-shot evaluation: retrieval (R@1/5/10 both ways) and classification (top-1/top-5) from embeddings.

    ranking.py         the pessimistic rank of the true match: the primitive behind both metrics
    retrieval.py       recall@k between text and images or audio
    classification.py  label files, class prompts, top-k accuracy
    embeddings.py      one rank's share of an evaluation pass -> embeddings (ranks in lockstep)
    gather.py          all ranks' rows on every rank, sorted by id, each sample exactly once
    zeroshot.py        one evaluation set from stream to metrics
    report.py          table and JSON
    cli.py             onepeace-eval
    periodic.py        evaluation during training (build_periodic_eval)
"""
