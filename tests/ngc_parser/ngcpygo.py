"""Stand-in for a module that ships only with NVIDIA's own CLI download; the batch parser imports these names."""


class ExecAttachArgs:
    pass


class NoGoException(Exception):
    pass


class NotFoundException(Exception):
    pass


def exec_attach(*args, **kwargs):
    raise NoGoException("attach is not available in the offline parser check")
