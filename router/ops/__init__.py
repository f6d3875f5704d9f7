"""Operations: the status HTTP listener, metrics and their exposition, the status client.
"""
