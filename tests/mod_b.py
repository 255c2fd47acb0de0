import safepool


@safepool.task
def work(x):
    return ("mod_b", x)
