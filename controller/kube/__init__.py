"""The API client: typed decoding of API objects, list+watch, leader election."""
