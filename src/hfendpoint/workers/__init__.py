"""
Workers for real models, written on the worker library and shipped with
the gateway; each is a module run with C{python -m}, installed with its
extra:

    hfendpoint.workers.sentence_transformers   pip install 'hfendpoint[sentence-transformers]'
    hfendpoint.workers.transformers            pip install 'hfendpoint[transformers]'
    hfendpoint.workers.llama_cpp               pip install 'hfendpoint[llama-cpp]'
    hfendpoint.workers.diffusers               pip install 'hfendpoint[diffusers]'

They are ordinary workers: nothing here is known to the gateway, which
starts them like any other program.
"""
