from kdpipe.cli import main

raise SystemExit(main())
