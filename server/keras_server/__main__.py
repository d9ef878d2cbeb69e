from keras_server.cli import main

raise SystemExit(main())
