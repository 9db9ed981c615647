"""The soft-target cache, onnxkd's central artifact: building it (`build.cache_teacher`),
writing it (`writer`), reading and checking it (`reader`), its typed manifest (`manifest`), its
summary, and finding the cache and data a model was made for (`for_model`)."""
