/*
 * Node 0x12 socket 3: iMC 2 has two 64 MiB NVDIMMs (channel 0 dimm 1, channel 1 dimm 1),
 * iMC 5 has one (channel 2 dimm 0); one 3-way 4 KiB range. The iMC 5 NVDIMM's flush hint structure
 * lists no hints; the set still supports WPQ flushing (Linux nvdimm_has_flush: a hint on any
 * of its DIMMs is enough). Capabilities: highest 1, bits 0x5 -> masked 0x1 -> eadr.
 */
[0004]                          Signature : "NFIT"
[0004]                       Table Length : 00000000
[0001]                           Revision : 01
[0001]                           Checksum : 00
[0006]                             Oem ID : "NVTEST"
[0008]                       Oem Table ID : "PARTIAL "
[0004]                       Oem Revision : 00000001
[0004]                    Asl Compiler ID : "INTL"
[0004]              Asl Compiler Revision : 00000000

[0004]                           Reserved : 00000000

[0002]                      Subtable Type : 0000 [System Physical Address Range]
[0002]                             Length : 0000

[0002]                        Range Index : 0007
[0002]              Flags (decoded below) : 0004
                Add/Online Operation Only : 0
                   Proximity Domain Valid : 0
                    Location Cookie Valid : 1
[0004]                           Reserved : 00000000
[0004]                   Proximity Domain : 00000000
[0016]                   Region Type GUID : 66F0D379-B4F3-4074-AC43-0D3318B78CDB
[0008]                 Address Range Base : 0000004000000000
[0008]               Address Range Length : 000000000C000000
[0008]               Memory Map Attribute : 0000000000008008
[0008]                    Location Cookie : 4E56454D55000001

[0002]                      Subtable Type : 0001 [Memory Range Map]
[0002]                             Length : 0000

[0004]                      Device Handle : 00123201
[0002]                        Physical Id : 0020
[0002]                          Region Id : 0000
[0002]                        Range Index : 0007
[0002]               Control Region Index : 0001
[0008]                        Region Size : 0000000004000000
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

[0004]                      Device Handle : 00123211
[0002]                        Physical Id : 0021
[0002]                          Region Id : 0000
[0002]                        Range Index : 0007
[0002]               Control Region Index : 0002
[0008]                        Region Size : 0000000004000000
[0008]                      Region Offset : 0000000000001000
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

[0004]                      Device Handle : 00123520
[0002]                        Physical Id : 0022
[0002]                          Region Id : 0000
[0002]                        Range Index : 0007
[0002]               Control Region Index : 0003
[0008]                        Region Size : 0000000004000000
[0008]                      Region Offset : 0000000000002000
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
[0004]                         Line Count : 00000001
[0004]                          Line Size : 00001000
[0004]                        Line Offset : 00000000

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
[0004]                      Serial Number : 00005000
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
[0004]                      Serial Number : 00005001
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
[0004]                      Serial Number : 00005002
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

[0004]                      Device Handle : 00123201
[0002]                         Hint Count : 0001
[0006]                           Reserved : 000000000000
[0008]                       Hint Address : 00000000C0000000

[0002]                      Subtable Type : 0006 [Flush Hint Address]
[0002]                             Length : 0000

[0004]                      Device Handle : 00123211
[0002]                         Hint Count : 0002
[0006]                           Reserved : 000000000000
[0008]                       Hint Address : 00000000C0000040
[0008]                       Hint Address : 00000000C0000080

[0002]                      Subtable Type : 0006 [Flush Hint Address]
[0002]                             Length : 0000

[0004]                      Device Handle : 00123520
[0002]                         Hint Count : 0000
[0006]                           Reserved : 000000000000

[0002]                      Subtable Type : 0007 [Platform Capabilities]
[0002]                             Length : 0000

[0001]                 Highest Capability : 01
[0003]                           Reserved : 000000
[0004]       Capabilities (decoded below) : 00000005
                    Cache Flush to NVDIMM : 1
                   Memory Flush to NVDIMM : 0
                         Memory Mirroring : 1
[0004]                           Reserved : 00000000
