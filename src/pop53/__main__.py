import sys

if sys.argv[1:2] == ["ctl"]:
    # the lean path: the control client alone, without argparse or the server's modules
    from pop53.serve.ctlclient import main as ctl_main
    sys.exit(ctl_main(sys.argv[2:]))

from pop53.cli import main  # noqa: E402

sys.exit(main())
