def handler(event, context):
    raise RuntimeError("this function always raises")
