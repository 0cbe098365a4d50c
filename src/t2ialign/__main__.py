from t2ialign.cli import entry

entry()
