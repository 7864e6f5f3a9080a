"""TRACE in the tools retrieval people already use. Each module imports its tool only when used:

    mteb_tasks.py   M-BEIR pairs as mteb retrieval tasks read from a local M-BEIR tree; MIEB's names for them
    mteb_model.py   TraceMtebEncoder: the model wrapper mteb's evaluator runs (`pip install .[mteb]`)
    mteb_run.py     `python -m trainer.evaluate mteb --checkpoint C --tasks T1,T2 --output_dir D`
    st.py           the files that make a checkpoint load with SentenceTransformer(path_or_id,
                    trust_remote_code=True) (`pip install .[st]`); `python -m trainer.integrations.st export C`
    st_module.py    TraceModule: the sentence-transformers module those files name
"""
