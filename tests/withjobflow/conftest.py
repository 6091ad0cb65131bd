from tests.backends.dask_fixtures import dask_cluster  # noqa: F401
from tests.backends.slurm_fixtures import slurm  # noqa: F401
