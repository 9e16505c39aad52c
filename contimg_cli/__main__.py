from contimg_cli.main import main

raise SystemExit(main())
