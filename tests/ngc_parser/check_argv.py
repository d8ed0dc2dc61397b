"""Parse an `ngc` argv with NVIDIA's own parser (ngcsdk 4.19.1), offline: exit 0 if it parses, 2 if not.

python check_argv.py batch run --name x ...   (needs NGC_CLI_API_KEY set to anything, HOME a tmp dir)
"""

import sys

sys.path.insert(0, __file__.rsplit("/", 1)[0])

from ngcbase.command.basecli import BaseCLIRunner  # noqa: E402
from ngcsdk import APIClient  # noqa: E402


class Runner(BaseCLIRunner):
    @staticmethod
    def import_modules():
        import basecommand.command.all_commands  # noqa: F401
        import ngcbase.command.config  # noqa: F401


Runner(APIClient()).get_parser().parse_args(sys.argv[1:])
print("parsed")
