"""Old path of the reference teacher, now the package pipeline/teacher/reference/ (server.py); kept only while
pipeline/make_dataset.py imports ReferenceServer from here (`python -m pipeline.teacher.reference_server` still
starts the server meanwhile)."""

from pipeline.teacher.reference.server import ReferenceServer as ReferenceServer
from pipeline.teacher.reference.server import main

if __name__ == "__main__":
    main()
