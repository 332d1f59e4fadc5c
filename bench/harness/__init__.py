"""The bench harness: the suite, its load client, the servers it runs, the scripted upstream."""
