"""Pictures of runs (matplotlib, the extra ``shoal[report]``): the task graph for ``shoal graph
--format png``; more figures come with ``shoal report``. matplotlib is imported only here."""
