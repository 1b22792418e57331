from kil.cli import main

raise SystemExit(main())
