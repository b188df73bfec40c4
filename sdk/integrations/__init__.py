"""unidb inside other frameworks: ``unidb.integrations.langchain`` (extra ``langchain``) and
``unidb.integrations.llamaindex`` (extra ``llamaindex``)."""
