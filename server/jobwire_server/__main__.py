from jobwire_server.cli import main

raise SystemExit(main())
