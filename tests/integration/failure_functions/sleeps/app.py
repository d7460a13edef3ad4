import time


def handler(event, context):
    print("sleeping past my timeout")
    time.sleep(60)
