import safepool


@safepool.task
def work(x):
    return ("mod_a", x)
