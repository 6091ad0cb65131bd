from tests.backends.dask_fixtures import dask_cluster  # noqa: F401
