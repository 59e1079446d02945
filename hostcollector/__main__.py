from hostcollector.cli import main

raise SystemExit(main())
