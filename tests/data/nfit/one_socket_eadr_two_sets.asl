/*
 * One socket, three iMCs, two 256 MiB NVDIMMs per iMC (channel 0 and channel 1).
 * Range 1: the channel-0 NVDIMMs, 3-way at 256 bytes; range 2: the channel-1 NVDIMMs, same.
 * Range 3 is volatile memory with no NVDIMM maps. Three flush hints per NVDIMM (shared per iMC).
 * Capabilities: highest 2, bits 0x7 (cache flush, memory flush, mirroring) -> eadr.
 */
[0004]                          Signature : "NFIT"
[0004]                       Table Length : 00000000
[0001]                           Revision : 01
[0001]                           Checksum : 00
[0006]                             Oem ID : "NVTEST"
[0008]                       Oem Table ID : "1S3M2SET"
[0004]                       Oem Revision : 00000001
[0004]                    Asl Compiler ID : "INTL"
[0004]              Asl Compiler Revision : 00000000

[0004]                           Reserved : 00000000

[0002]                      Subtable Type : 0000 [System Physical Address Range]
[0002]                             Length : 0000

[0002]                        Range Index : 0003
[0002]              Flags (decoded below) : 0004
                Add/Online Operation Only : 0
                   Proximity Domain Valid : 0
                    Location Cookie Valid : 1
[0004]                           Reserved : 00000000
[0004]                   Proximity Domain : 00000000
[0016]                   Region Type GUID : 7305944F-FDDA-44E3-B16C-3F22D252E5D0
[0008]                 Address Range Base : 0000000100000000
[0008]               Address Range Length : 0000000080000000
[0008]               Memory Map Attribute : 0000000000000008
[0008]                    Location Cookie : 4E56454D55000001

[0002]                      Subtable Type : 0000 [System Physical Address Range]
[0002]                             Length : 0000

[0002]                        Range Index : 0001
[0002]              Flags (decoded below) : 0004
                Add/Online Operation Only : 0
                   Proximity Domain Valid : 0
                    Location Cookie Valid : 1
[0004]                           Reserved : 00000000
[0004]                   Proximity Domain : 00000000
[0016]                   Region Type GUID : 66F0D379-B4F3-4074-AC43-0D3318B78CDB
[0008]                 Address Range Base : 0000000200000000
[0008]               Address Range Length : 0000000030000000
[0008]               Memory Map Attribute : 0000000000008008
[0008]                    Location Cookie : 4E56454D55000002

[0002]                      Subtable Type : 0000 [System Physical Address Range]
[0002]                             Length : 0000

[0002]                        Range Index : 0002
[0002]              Flags (decoded below) : 0004
                Add/Online Operation Only : 0
                   Proximity Domain Valid : 0
                    Location Cookie Valid : 1
[0004]                           Reserved : 00000000
[0004]                   Proximity Domain : 00000000
[0016]                   Region Type GUID : 66F0D379-B4F3-4074-AC43-0D3318B78CDB
[0008]                 Address Range Base : 0000000300000000
[0008]               Address Range Length : 0000000030000000
[0008]               Memory Map Attribute : 0000000000008008
[0008]                    Location Cookie : 4E56454D55000003

[0002]                      Subtable Type : 0001 [Memory Range Map]
[0002]                             Length : 0000

[0004]                      Device Handle : 00000000
[0002]                        Physical Id : 0000
[0002]                          Region Id : 0000
[0002]                        Range Index : 0001
[0002]               Control Region Index : 0001
[0008]                        Region Size : 0000000010000000
[0008]                      Region Offset : 0000000000000000
[0008]                Address Region Base : 0000000000000000
[0002]                   Interleave Index : 0001
[0002]                    Interleave Ways : 0003
[0002]                              Flags : 0000
                    Save to device failed : 0
               Restore from device failed : 0
                    Platform flush failed : 0
                         Device not armed : 0
                   Health events observed : 0
                    Health events enabled : 0
                           Mapping failed : 0
[0002]                           Reserved : 0000

[0002]                      Subtable Type : 0001 [Memory Range Map]
[0002]                             Length : 0000

[0004]                      Device Handle : 00000010
[0002]                        Physical Id : 0001
[0002]                          Region Id : 0000
[0002]                        Range Index : 0002
[0002]               Control Region Index : 0002
[0008]                        Region Size : 0000000010000000
[0008]                      Region Offset : 0000000000000000
[0008]                Address Region Base : 0000000000000000
[0002]                   Interleave Index : 0001
[0002]                    Interleave Ways : 0003
[0002]                              Flags : 0000
                    Save to device failed : 0
               Restore from device failed : 0
                    Platform flush failed : 0
                         Device not armed : 0
                   Health events observed : 0
                    Health events enabled : 0
                           Mapping failed : 0
[0002]                           Reserved : 0000

[0002]                      Subtable Type : 0001 [Memory Range Map]
[0002]                             Length : 0000

[0004]                      Device Handle : 00000100
[0002]                        Physical Id : 0002
[0002]                          Region Id : 0000
[0002]                        Range Index : 0001
[0002]               Control Region Index : 0003
[0008]                        Region Size : 0000000010000000
[0008]                      Region Offset : 0000000000000100
[0008]                Address Region Base : 0000000000000000
[0002]                   Interleave Index : 0001
[0002]                    Interleave Ways : 0003
[0002]                              Flags : 0000
                    Save to device failed : 0
               Restore from device failed : 0
                    Platform flush failed : 0
                         Device not armed : 0
                   Health events observed : 0
                    Health events enabled : 0
                           Mapping failed : 0
[0002]                           Reserved : 0000

[0002]                      Subtable Type : 0001 [Memory Range Map]
[0002]                             Length : 0000

[0004]                      Device Handle : 00000110
[0002]                        Physical Id : 0003
[0002]                          Region Id : 0000
[0002]                        Range Index : 0002
[0002]               Control Region Index : 0004
[0008]                        Region Size : 0000000010000000
[0008]                      Region Offset : 0000000000000100
[0008]                Address Region Base : 0000000000000000
[0002]                   Interleave Index : 0001
[0002]                    Interleave Ways : 0003
[0002]                              Flags : 0000
                    Save to device failed : 0
               Restore from device failed : 0
                    Platform flush failed : 0
                         Device not armed : 0
                   Health events observed : 0
                    Health events enabled : 0
                           Mapping failed : 0
[0002]                           Reserved : 0000

[0002]                      Subtable Type : 0001 [Memory Range Map]
[0002]                             Length : 0000

[0004]                      Device Handle : 00000200
[0002]                        Physical Id : 0004
[0002]                          Region Id : 0000
[0002]                        Range Index : 0001
[0002]               Control Region Index : 0005
[0008]                        Region Size : 0000000010000000
[0008]                      Region Offset : 0000000000000200
[0008]                Address Region Base : 0000000000000000
[0002]                   Interleave Index : 0001
[0002]                    Interleave Ways : 0003
[0002]                              Flags : 0000
                    Save to device failed : 0
               Restore from device failed : 0
                    Platform flush failed : 0
                         Device not armed : 0
                   Health events observed : 0
                    Health events enabled : 0
                           Mapping failed : 0
[0002]                           Reserved : 0000

[0002]                      Subtable Type : 0001 [Memory Range Map]
[0002]                             Length : 0000

[0004]                      Device Handle : 00000210
[0002]                        Physical Id : 0005
[0002]                          Region Id : 0000
[0002]                        Range Index : 0002
[0002]               Control Region Index : 0006
[0008]                        Region Size : 0000000010000000
[0008]                      Region Offset : 0000000000000200
[0008]                Address Region Base : 0000000000000000
[0002]                   Interleave Index : 0001
[0002]                    Interleave Ways : 0003
[0002]                              Flags : 0000
                    Save to device failed : 0
               Restore from device failed : 0
                    Platform flush failed : 0
                         Device not armed : 0
                   Health events observed : 0
                    Health events enabled : 0
                           Mapping failed : 0
[0002]                           Reserved : 0000

[0002]                      Subtable Type : 0002 [Interleave Info]
[0002]                             Length : 0000

[0002]                   Interleave Index : 0001
[0002]                           Reserved : 0000
[0004]                         Line Count : 00000004
[0004]                          Line Size : 00000100
[0004]                        Line Offset : 00000000
[0004]                        Line Offset : 00000003
[0004]                        Line Offset : 00000006
[0004]                        Line Offset : 00000009

[0002]                      Subtable Type : 0004 [NVDIMM Control Region]
[0002]                             Length : 0000

[0002]                       Region Index : 0001
[0002]                          Vendor Id : 8086
[0002]                          Device Id : 0979
[0002]                        Revision Id : 0001
[0002]                Subsystem Vendor Id : 8089
[0002]                Subsystem Device Id : 0979
[0002]              Subsystem Revision Id : 0001
[0001]                       Valid Fields : 01
[0001]             Manufacturing Location : 0A
[0002]                 Manufacturing Date : 1918
[0002]                           Reserved : 0000
[0004]                      Serial Number : 00002000
[0002]                               Code : 0301
[0002]                       Window Count : 0000
[0008]                        Window Size : 0000000000000000
[0008]                     Command Offset : 0000000000000000
[0008]                       Command Size : 0000000000000000
[0008]                      Status Offset : 0000000000000000
[0008]                        Status Size : 0000000000000000
[0002]                              Flags : 0000
                         Windows buffered : 0
[0006]                          Reserved1 : 000000000000

[0002]                      Subtable Type : 0004 [NVDIMM Control Region]
[0002]                             Length : 0000

[0002]                       Region Index : 0002
[0002]                          Vendor Id : 8086
[0002]                          Device Id : 0979
[0002]                        Revision Id : 0001
[0002]                Subsystem Vendor Id : 8089
[0002]                Subsystem Device Id : 0979
[0002]              Subsystem Revision Id : 0001
[0001]                       Valid Fields : 01
[0001]             Manufacturing Location : 0A
[0002]                 Manufacturing Date : 1918
[0002]                           Reserved : 0000
[0004]                      Serial Number : 00002001
[0002]                               Code : 0301
[0002]                       Window Count : 0000
[0008]                        Window Size : 0000000000000000
[0008]                     Command Offset : 0000000000000000
[0008]                       Command Size : 0000000000000000
[0008]                      Status Offset : 0000000000000000
[0008]                        Status Size : 0000000000000000
[0002]                              Flags : 0000
                         Windows buffered : 0
[0006]                          Reserved1 : 000000000000

[0002]                      Subtable Type : 0004 [NVDIMM Control Region]
[0002]                             Length : 0000

[0002]                       Region Index : 0003
[0002]                          Vendor Id : 8086
[0002]                          Device Id : 0979
[0002]                        Revision Id : 0001
[0002]                Subsystem Vendor Id : 8089
[0002]                Subsystem Device Id : 0979
[0002]              Subsystem Revision Id : 0001
[0001]                       Valid Fields : 01
[0001]             Manufacturing Location : 0A
[0002]                 Manufacturing Date : 1918
[0002]                           Reserved : 0000
[0004]                      Serial Number : 00002002
[0002]                               Code : 0301
[0002]                       Window Count : 0000
[0008]                        Window Size : 0000000000000000
[0008]                     Command Offset : 0000000000000000
[0008]                       Command Size : 0000000000000000
[0008]                      Status Offset : 0000000000000000
[0008]                        Status Size : 0000000000000000
[0002]                              Flags : 0000
                         Windows buffered : 0
[0006]                          Reserved1 : 000000000000

[0002]                      Subtable Type : 0004 [NVDIMM Control Region]
[0002]                             Length : 0000

[0002]                       Region Index : 0004
[0002]                          Vendor Id : 8086
[0002]                          Device Id : 0979
[0002]                        Revision Id : 0001
[0002]                Subsystem Vendor Id : 8089
[0002]                Subsystem Device Id : 0979
[0002]              Subsystem Revision Id : 0001
[0001]                       Valid Fields : 01
[0001]             Manufacturing Location : 0A
[0002]                 Manufacturing Date : 1918
[0002]                           Reserved : 0000
[0004]                      Serial Number : 00002003
[0002]                               Code : 0301
[0002]                       Window Count : 0000
[0008]                        Window Size : 0000000000000000
[0008]                     Command Offset : 0000000000000000
[0008]                       Command Size : 0000000000000000
[0008]                      Status Offset : 0000000000000000
[0008]                        Status Size : 0000000000000000
[0002]                              Flags : 0000
                         Windows buffered : 0
[0006]                          Reserved1 : 000000000000

[0002]                      Subtable Type : 0004 [NVDIMM Control Region]
[0002]                             Length : 0000

[0002]                       Region Index : 0005
[0002]                          Vendor Id : 8086
[0002]                          Device Id : 0979
[0002]                        Revision Id : 0001
[0002]                Subsystem Vendor Id : 8089
[0002]                Subsystem Device Id : 0979
[0002]              Subsystem Revision Id : 0001
[0001]                       Valid Fields : 01
[0001]             Manufacturing Location : 0A
[0002]                 Manufacturing Date : 1918
[0002]                           Reserved : 0000
[0004]                      Serial Number : 00002004
[0002]                               Code : 0301
[0002]                       Window Count : 0000
[0008]                        Window Size : 0000000000000000
[0008]                     Command Offset : 0000000000000000
[0008]                       Command Size : 0000000000000000
[0008]                      Status Offset : 0000000000000000
[0008]                        Status Size : 0000000000000000
[0002]                              Flags : 0000
                         Windows buffered : 0
[0006]                          Reserved1 : 000000000000

[0002]                      Subtable Type : 0004 [NVDIMM Control Region]
[0002]                             Length : 0000

[0002]                       Region Index : 0006
[0002]                          Vendor Id : 8086
[0002]                          Device Id : 0979
[0002]                        Revision Id : 0001
[0002]                Subsystem Vendor Id : 8089
[0002]                Subsystem Device Id : 0979
[0002]              Subsystem Revision Id : 0001
[0001]                       Valid Fields : 01
[0001]             Manufacturing Location : 0A
[0002]                 Manufacturing Date : 1918
[0002]                           Reserved : 0000
[0004]                      Serial Number : 00002005
[0002]                               Code : 0301
[0002]                       Window Count : 0000
[0008]                        Window Size : 0000000000000000
[0008]                     Command Offset : 0000000000000000
[0008]                       Command Size : 0000000000000000
[0008]                      Status Offset : 0000000000000000
[0008]                        Status Size : 0000000000000000
[0002]                              Flags : 0000
                         Windows buffered : 0
[0006]                          Reserved1 : 000000000000

[0002]                      Subtable Type : 0006 [Flush Hint Address]
[0002]                             Length : 0000

[0004]                      Device Handle : 00000000
[0002]                         Hint Count : 0003
[0006]                           Reserved : 000000000000
[0008]                       Hint Address : 00000000E0000000
[0008]                       Hint Address : 00000000E0000040
[0008]                       Hint Address : 00000000E0000080

[0002]                      Subtable Type : 0006 [Flush Hint Address]
[0002]                             Length : 0000

[0004]                      Device Handle : 00000010
[0002]                         Hint Count : 0003
[0006]                           Reserved : 000000000000
[0008]                       Hint Address : 00000000E0000000
[0008]                       Hint Address : 00000000E0000040
[0008]                       Hint Address : 00000000E0000080

[0002]                      Subtable Type : 0006 [Flush Hint Address]
[0002]                             Length : 0000

[0004]                      Device Handle : 00000100
[0002]                         Hint Count : 0003
[0006]                           Reserved : 000000000000
[0008]                       Hint Address : 00000000E0001000
[0008]                       Hint Address : 00000000E0001040
[0008]                       Hint Address : 00000000E0001080

[0002]                      Subtable Type : 0006 [Flush Hint Address]
[0002]                             Length : 0000

[0004]                      Device Handle : 00000110
[0002]                         Hint Count : 0003
[0006]                           Reserved : 000000000000
[0008]                       Hint Address : 00000000E0001000
[0008]                       Hint Address : 00000000E0001040
[0008]                       Hint Address : 00000000E0001080

[0002]                      Subtable Type : 0006 [Flush Hint Address]
[0002]                             Length : 0000

[0004]                      Device Handle : 00000200
[0002]                         Hint Count : 0003
[0006]                           Reserved : 000000000000
[0008]                       Hint Address : 00000000E0002000
[0008]                       Hint Address : 00000000E0002040
[0008]                       Hint Address : 00000000E0002080

[0002]                      Subtable Type : 0006 [Flush Hint Address]
[0002]                             Length : 0000

[0004]                      Device Handle : 00000210
[0002]                         Hint Count : 0003
[0006]                           Reserved : 000000000000
[0008]                       Hint Address : 00000000E0002000
[0008]                       Hint Address : 00000000E0002040
[0008]                       Hint Address : 00000000E0002080

[0002]                      Subtable Type : 0007 [Platform Capabilities]
[0002]                             Length : 0000

[0001]                 Highest Capability : 02
[0003]                           Reserved : 000000
[0004]       Capabilities (decoded below) : 00000007
                    Cache Flush to NVDIMM : 1
                   Memory Flush to NVDIMM : 1
                         Memory Mirroring : 1
[0004]                           Reserved : 00000000
