"""cbr-crawler: a complete, trustworthy inventory of Huawei Cloud CBR backups."""

__version__ = "0.1.0"
